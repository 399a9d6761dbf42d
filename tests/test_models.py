"""The battery every registered family passes, unconditional and conditional, on tiny configs and seeded data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genlab.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from genlab.config import to_dict
from genlab.families import FAMILY_NAMES
from genlab.models import MODELS, build_model, register_model
from genlab.models.vae import VAE
from tests.conftest import FAMILIES, seeded_images, tiny_config

SHAPES = [("conv", 16, 1), ("conv", 28, 1), ("conv", 32, 3), ("conv", 64, 3), ("mlp", 16, 1), ("mlp", 8, 3)]
CLASSES = 3  # of the conditional variants
VARIANTS = [
    pytest.param(family, conditional, id=f"{family}-{'conditional' if conditional else 'plain'}")
    for family in FAMILIES
    for conditional in (False, True)
]


def variant_config(family: str, conditional: bool, *args, **kw):
    return tiny_config(family, *args, **kw, **({"conditional": True, "num_classes": CLASSES} if conditional else {}))


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % CLASSES


@pytest.mark.parametrize("family,conditional", VARIANTS)
@pytest.mark.parametrize("arch,size,channels", SHAPES)
def test_output_shapes(family, conditional, arch, size, channels):
    torch.manual_seed(0)
    model = build_model(variant_config(family, conditional, arch, size, channels)).eval()
    x = seeded_images(3, channels, size)
    y = labels(3) if conditional else None
    images = model.decode(torch.randn(3, 4), y)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    scores = model.anomaly_scores(x)
    assert "score" in scores and set(scores) - {"label"} == set(type(model).score_descriptions)
    assert ("label" in scores) == conditional
    assert all(v.shape == (3,) and torch.isfinite(v.double()).all() for v in scores.values())
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (3, 4)
    assert model.reconstruct(x, y).shape == x.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_networks_use_the_label(family):
    """The label changes what the decoder draws, and an unknown label is scored under the class that explains the
    image best: the one with the lowest primary score."""
    torch.manual_seed(0)
    model = build_model(variant_config(family, True)).eval()
    z = torch.randn(1, 4).expand(CLASSES, 4)
    drawn = model.decode(z, torch.arange(CLASSES))
    assert not torch.equal(drawn[0], drawn[1])
    x = seeded_images(4)
    every = torch.stack([model.anomaly_scores(x, torch.full((4,), k))["score"] for k in range(CLASSES)])
    searched = model.anomaly_scores(x)
    assert torch.equal(searched["label"], every.argmin(dim=0))
    torch.testing.assert_close(searched["score"], every.min(dim=0).values)
    mixed = model.anomaly_scores(x, torch.tensor([2, -1, 0, -1]))  # given where known, searched where -1
    assert mixed["label"].tolist() == [2, int(every[:, 1].argmin()), 0, int(every[:, 3].argmin())]
    with pytest.raises(ValueError, match="class labels"):
        model.decode(z)


@pytest.mark.parametrize("family,conditional", VARIANTS)
def test_loss_decreases_on_fixed_data(family, conditional):
    """A few steps on one fixed batch lower the family's main reconstruction / discriminator loss."""
    torch.manual_seed(0)
    model = build_model(variant_config(family, conditional, width=8)).train()
    # (2e-3 makes the tiny GAN's discriminator win, then lose: too fast to show a trend in 30 steps)
    optimizers = model.configure_optimizers(1e-3 if family == "gan" else 2e-3, (0.5, 0.999))
    x = seeded_images(32)
    key = {"vae": "loss", "gan": "d_loss", "vaegan": "llike"}[family]
    losses = [model.train_step(x, labels(32), optimizers)[key].item() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("family,conditional", VARIANTS)
def test_train_step_updates_every_network(family, conditional):
    torch.manual_seed(0)
    model = build_model(variant_config(family, conditional)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train_step(seeded_images(8), labels(8), model.configure_optimizers(1e-3, (0.5, 0.999)))
    for name in ("encoder", "decoder", "discriminator"):
        if hasattr(model, name):
            changed = [
                not torch.equal(before[k], v)
                for k, v in model.state_dict().items()
                if k.startswith(name) and "weight" in k
            ]
            assert any(changed), f"{name} was not updated"


def test_vaegan_encoder_gets_no_gan_gradient():
    """Algorithm 1: the encoder's update is grad(L_prior + L_llike) only."""
    torch.manual_seed(0)
    model = build_model(tiny_config("vaegan")).train()
    x = seeded_images(8)
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured[self] = [p.grad.clone() for g in self.param_groups for p in g["params"]]

    optimizers = {
        name: Capture(getattr(model, name).parameters(), lr=0.0) for name in ("encoder", "decoder", "discriminator")
    }
    torch.manual_seed(1)
    model.train_step(x, labels(8), optimizers)
    # recompute the encoder loss alone with the same noise and compare gradients
    from genlab.models.base import kl_to_standard_normal, reparameterize
    from genlab.models.vaegan import feature_error

    torch.manual_seed(1)
    mu, logvar = model.encoder(x)
    x_rec = model.decode(reparameterize(mu, logvar))
    x_prior = model.decode(model.sample_latents(8))
    _, features = model.discriminator(torch.cat([x, x_rec, x_prior]))
    f_x, f_rec, _ = features.split(8)
    loss = kl_to_standard_normal(mu, logvar).mean() + feature_error(f_x, f_rec).mean()
    expected = torch.autograd.grad(loss, list(model.encoder.parameters()))
    for got, want in zip(captured[optimizers["encoder"]], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family,conditional", VARIANTS)
def test_save_load_gives_identical_outputs(family, conditional, tmp_path):
    torch.manual_seed(0)
    cfg = variant_config(family, conditional)
    model = build_model(cfg)
    model.train_step(seeded_images(8), labels(8), model.configure_optimizers(1e-3, (0.5, 0.999)))
    model.eval()
    payload = {
        "family": family,
        "model_config": to_dict(cfg),
        "train_config": {},
        "data": {},
        "model": model.state_dict(),
    }
    save_checkpoint(payload, tmp_path / "m.pt")
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    z, x = torch.randn(4, 4), seeded_images(4)
    y = labels(4) if conditional else None
    assert loaded.conditional == conditional
    assert torch.equal(model.decode(z, y), loaded.decode(z, y))
    for name, value in model.anomaly_scores(x).items():
        assert torch.equal(value, loaded.anomaly_scores(x)[name])


@pytest.mark.parametrize("family,conditional", VARIANTS)
def test_scores_do_not_depend_on_batch(family, conditional):
    torch.manual_seed(0)
    model = build_model(variant_config(family, conditional)).eval()
    x = seeded_images(10)
    whole = model.anomaly_scores(x)["score"]
    parts = torch.cat([model.anomaly_scores(x[i : i + 3])["score"] for i in range(0, 10, 3)])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


def test_registry_validates_what_it_receives():
    with pytest.raises(ValueError):
        register_model(VAE)  # already registered
    with pytest.raises(TypeError):
        register_model(dict)  # type: ignore[arg-type]
    assert tuple(MODELS) == FAMILY_NAMES

    class Unlisted(VAE):
        family = "diffusion"

    with pytest.raises(ValueError, match="not in genlab.families"):
        register_model(Unlisted)

    class WrongEncoder(VAE):
        has_encoder = False

    with pytest.raises(ValueError, match="has_encoder"):
        register_model(WrongEncoder)
    assert tuple(MODELS) == FAMILY_NAMES


def test_recon_error_has_one_definition():
    """The score component (torch, inside score.onnx) and what /reconstruct and the evaluators report
    (genlab.measures, NumPy on the uint8 images) are the same number."""
    from genlab.measures import recon_error as recon_error_np
    from genlab.models.base import recon_error
    from genlab.pixels import model_to_uint8, uint8_to_model

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 16, 16), generator=g, dtype=torch.uint8)
    recons = torch.rand(6, 1, 16, 16, generator=g) * 2.4 - 1.2  # a decoder's output, beyond [-1, 1] too
    ours = recon_error(uint8_to_model(images), recons)
    theirs = recon_error_np(images.numpy(), model_to_uint8(recons).numpy())
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12)
    assert recon_error(uint8_to_model(images), uint8_to_model(images)).abs().max() == 0
