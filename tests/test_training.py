"""The training loop end to end on small real data: artifacts, checkpoint, exact resume, NaN stop."""

from __future__ import annotations

import json

import pytest
import torch
from genlab.training.loop import TrainingDiverged, resume, train

from genlab.checkpoint import describe, load_checkpoint, model_from_checkpoint
from genlab.config import TrainConfig
from genlab.errors import GenlabError
from genlab.pixels import uint8_to_model
from tests.conftest import FAMILIES, TINY

# one digit class of mnist-5k: 400 train / 50 val images, 12 steps per epoch at batch 32
# (sample quality is tracked only by the runs of the tests that check it: quality_every=1)
SMALL = dict(dataset="mnist-5k", normal_class=1, batch_size=32, log_every=5, sample_count=16, quality_every=0)


def _train(out, family="vae", **kw):
    return train(family, dict(TINY), TrainConfig(**{**SMALL, **kw}), out)


def _resume(out, family="vae", **changes):
    return resume(family, out, changes)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_writes_a_self_describing_checkpoint(family, tmp_path):
    summary = _train(tmp_path / "run", family, epochs=2, translate=0.1)
    assert summary["stopped"] is None and summary["step"] == 24 and summary["epoch"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["complete"] and ckpt["family"] == family and ckpt["step"] == 24
    assert ckpt["data"] == {
        **ckpt["data"],
        "dataset": "mnist-5k",
        "image_size": 28,
        "channels": 1,
        "value_range": [-1.0, 1.0],
        "normal_class": 1,
        "translate": 0.1,
        "num_train": 400,
    }
    assert ckpt["train_config"]["lr"] == {"vaegan": 3e-4, "vae": 1e-3}.get(family, 2e-4)  # one-class: the VAE's own
    assert len(ckpt["metrics"]["epochs"]) == 2
    cal = ckpt["calibration"]
    assert cal["n"] == 50 and "score" in cal["scores"]
    for values in cal["scores"].values():
        assert len(values) == 1001 and values == sorted(values)

    # the checkpoint alone rebuilds the model, and its scores reproduce the calibration
    model = model_from_checkpoint(ckpt)
    from genlab.data import load_split

    val = load_split("mnist-5k", "val").only_class(1)
    scores = model.anomaly_scores(uint8_to_model(val.images))["score"]
    assert scores.min().item() == pytest.approx(cal["scores"]["score"][0], rel=1e-4)
    assert scores.max().item() == pytest.approx(cal["scores"]["score"][-1], rel=1e-4)

    run = tmp_path / "run"
    for name in ("samples.png", "samples/epoch_001.png", "samples/epoch_002.png", "loss_curves.png", "metrics.jsonl"):
        assert (run / name).stat().st_size > 0
    assert (run / "reconstructions.png").exists()  # every family has an encoder (the GAN: f-AnoGAN's)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 25))
    assert len([r for r in records if r["kind"] == "epoch"]) == 2
    assert (
        describe(ckpt)["calibration"]["scores"]["score"]["p99"]
        >= describe(ckpt)["calibration"]["scores"]["score"]["p50"]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_matches_an_uninterrupted_run(family, tmp_path):
    _train(tmp_path / "straight", family, epochs=2, quality_every=1)
    stopped = _train(tmp_path / "split", family, epochs=2, max_steps=7, quality_every=1)  # stops mid-epoch 1
    assert stopped["stopped"] == "max_steps" and stopped["step"] == 7
    assert not load_checkpoint(tmp_path / "split")["complete"]
    _resume(tmp_path / "split", family, max_steps=None)  # lift the step limit; epochs stay 2
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 24
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    untimed = lambda epochs: [{k: v for k, v in e.items() if not k.endswith("_seconds")} for e in epochs]  # noqa: E731
    assert untimed(a["metrics"]["epochs"]) == untimed(b["metrics"]["epochs"])  # losses and sample quality alike
    assert a["quality"] == b["quality"] and a["quality"]["best_epoch"] is not None
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "step"' in line
    ]
    assert steps == list(range(1, 25))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_conditional_run_resumes_exactly_and_records_its_classes(family, tmp_path):
    """All ten digits with their labels (40 steps of 100 images); the sample grid has one row per class."""
    conditional = dict(SMALL, normal_class=None, batch_size=100, epochs=1, quality_every=1)
    train(family, {**TINY, "conditional": True}, TrainConfig(**conditional), tmp_path / "straight")
    train(family, {**TINY, "conditional": True}, TrainConfig(**conditional, max_steps=7), tmp_path / "split")
    _resume(tmp_path / "split", family, max_steps=None)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["model_config"]["conditional"] and a["model_config"]["num_classes"] == 10
    assert a["data"]["class_names"] == list("0123456789") and a["prior"]["kind"] == "per-class-gaussian-mixture"
    assert "quality_class_fidelity" in a["metrics"]["epochs"][-1]
    from PIL import Image

    with Image.open(tmp_path / "straight" / "samples.png") as grid:
        assert grid.size == (2 + 8 * 30, 2 + 10 * 30)  # 8 samples of each digit, one row per digit


def test_conditional_celeba_is_labelled_by_the_attribute_and_needs_one(fake_celeba_dir, tmp_path):
    faces = dict(
        dataset="celeba", data_dir=str(fake_celeba_dir), batch_size=4, epochs=1, quality_every=0, sample_count=4
    )
    with pytest.raises(GenlabError, match="single class.*--condition-on"):
        train("vae", {**TINY, "conditional": True}, TrainConfig(**faces), tmp_path / "run")
    train(
        "gan",
        {**TINY, "conditional": True, "image_size": 16},
        TrainConfig(**faces, condition_on="Male"),
        tmp_path / "male",
    )
    ckpt = load_checkpoint(tmp_path / "male")
    assert ckpt["complete"] and ckpt["model_config"]["num_classes"] == 2
    assert ckpt["data"]["class_names"] == ["not Male", "Male"] and ckpt["data"]["condition_on"] == "Male"


def test_resume_extends_a_finished_run(tmp_path):
    _train(tmp_path / "r", epochs=1)
    assert _resume(tmp_path / "r")["stopped"] == "already complete"
    summary = _resume(tmp_path / "r", epochs=2)
    assert summary["epoch"] == 2 and load_checkpoint(tmp_path / "r")["complete"]


def test_existing_run_is_never_overwritten(tmp_path):
    _train(tmp_path / "r", epochs=1, max_steps=2)
    before = (tmp_path / "r" / "last.pt").read_bytes()
    with pytest.raises(GenlabError, match="--resume"):
        _train(tmp_path / "r", epochs=1)
    assert (tmp_path / "r" / "last.pt").read_bytes() == before
    with pytest.raises(GenlabError, match="holds a vae run"):
        _resume(tmp_path / "r", "gan")
    with pytest.raises(GenlabError, match="no checkpoint"):
        _resume(tmp_path / "other")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _train(tmp_path / "r", epochs=1)
    good = (tmp_path / "r" / "last.pt").read_bytes()
    from genlab.models.vae import VAE

    original = VAE.train_step
    calls = {"n": 0}

    def exploding(self, x, y, optimizers):
        calls["n"] += 1
        out = original(self, x, y, optimizers)
        return {**out, "loss": torch.tensor(float("nan"))} if calls["n"] == 3 else out

    monkeypatch.setattr(VAE, "train_step", exploding)
    with pytest.raises(TrainingDiverged, match=r"loss loss became nan at step 15 \(epoch 2\)"):
        _resume(tmp_path / "r", epochs=2)
    assert (tmp_path / "r" / "last.pt").read_bytes() == good


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(GenlabError, match="less than one batch"):
        _train(tmp_path / "r", epochs=1, batch_size=1000)


def test_resume_keeps_the_checkpoints_configuration(tmp_path):
    """A resume without --epochs keeps the run's own epoch count, never the default 5."""
    _train(tmp_path / "r", epochs=7, max_steps=3, lr=1e-3, log_every=2)
    assert _resume(tmp_path / "r")["stopped"] == "max_steps"  # the step limit is part of the run, too
    summary = _resume(tmp_path / "r", max_steps=None)
    assert summary["epochs"] == summary["epoch"] == 7 and summary["stopped"] is None
    tc = load_checkpoint(tmp_path / "r")["train_config"]
    assert (tc["epochs"], tc["lr"], tc["log_every"], tc["max_steps"]) == (7, 1e-3, 2, None)
    for field in ("lr", "dataset", "batch_size", "normal_class"):
        with pytest.raises(GenlabError, match=rf"{field} cannot change"):
            _resume(tmp_path / "r", **{field: None})


def test_ema_weights_resume_exactly_and_are_what_the_checkpoint_samples_with(tmp_path):
    _train(tmp_path / "straight", "gan", epochs=2, ema=0.9)
    _train(tmp_path / "split", "gan", epochs=2, ema=0.9, max_steps=7)
    _resume(tmp_path / "split", "gan", max_steps=None)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["train_config"]["ema"] == 0.9 and a["ema"]["n_averaged"].item() == 24
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
    model = model_from_checkpoint(a)
    averaged = {k[len("module.") :]: v for k, v in a["ema"].items() if k.startswith("module.")}
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(value, averaged[key]), key  # the EMA, not the last training weights
    assert any(not torch.equal(a["model"][f"decoder.{k}"], v) for k, v in averaged.items())
    assert load_checkpoint(tmp_path / "straight")["calibration"] is not None
    with pytest.raises(GenlabError, match="ema must be"):
        TrainConfig(ema=1.0)


def test_the_class_loss_weight_is_the_familys_default_and_recorded(tmp_path):
    """The auxiliary-classifier GAN and the conditional VAE-GAN measured best at different weights (README); the run
    records the number it used, so a later change of default does not change a resumed run."""
    from genlab.training.loop import new_run_configs

    for family, weight in (("gan", 1.0), ("vaegan", 3.0)):
        mc, _ = new_run_configs(family, {"conditional": True}, TrainConfig(), tmp_path / family)
        assert mc.class_weight == weight
    assert new_run_configs("gan", {"class_weight": 2.5}, TrainConfig(), tmp_path / "set")[0].class_weight == 2.5


def test_resuming_a_finished_run_calibrates_score_components_it_lacks(tmp_path):
    """A run calibrated before a score component existed (an older genlab) gets it on --resume, weights unchanged."""
    _train(tmp_path / "r", epochs=1)
    path = tmp_path / "r" / "last.pt"
    old = load_checkpoint(path)
    del old["calibration"]["scores"]["stroke_error"]
    torch.save(old, path)
    _resume(tmp_path / "r")
    new = load_checkpoint(path)
    assert "stroke_error" in new["calibration"]["scores"] and new["step"] == old["step"]
    assert all(torch.equal(value, old["model"][key]) for key, value in new["model"].items())


@pytest.mark.parametrize("count", [1, 7, 8, 10, 17, 32])
def test_reconstruction_grid_keeps_originals_on_odd_rows_for_any_count(count):
    from genlab.training.sample_grids import RECON_COLUMNS, paired_rows

    originals = torch.arange(1, count + 1, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2)
    cells = paired_rows(originals, originals + 100)
    rows = cells.view(-1, RECON_COLUMNS, 1, 2, 2)[:, :, 0, 0, 0]  # one value per cell
    assert len(rows) == 2 * -(-count // RECON_COLUMNS)
    for pair in range(len(rows) // 2):
        shown = rows[2 * pair][rows[2 * pair] > 0]
        assert torch.equal(rows[2 * pair + 1][: len(shown)], shown + 100)  # each reconstruction under its original
        assert not rows[2 * pair + 1][len(shown) :].any()  # blank cells fill only the last pair of rows
    assert sorted(cells[cells > 0][::4].tolist()) == sorted([*range(1, count + 1), *range(101, count + 101)])


@pytest.mark.parametrize("available", [1, 3, 7, 8, 10, 17, 32, 50])
def test_the_reconstruction_grid_shows_only_images_it_has(available):
    from genlab.training.sample_grids import RECON_COLUMNS, RECON_IMAGES, paired_rows, recon_layout

    columns, count = recon_layout(available)
    assert columns == min(available, RECON_COLUMNS) and 0 < count <= min(available, RECON_IMAGES)
    assert count % columns == 0 and (available < RECON_COLUMNS or count > min(available, RECON_IMAGES) - columns)
    originals = torch.arange(1, count + 1, dtype=torch.uint8).view(count, 1, 1, 1)
    cells = paired_rows(originals, originals + 100, columns)
    assert len(cells) == 2 * count and cells.all()  # no blank cell


def test_a_small_validation_split_fills_the_reconstruction_grid(tmp_path, image_folder):
    from PIL import Image

    from genlab.config import TrainConfig as Config

    config = Config(dataset=f"folder:{image_folder}", batch_size=4, epochs=1, quality_every=0, sample_count=4)
    train("vae", dict(TINY, image_size=16), config, tmp_path / "r")
    num_val = load_checkpoint(tmp_path / "r")["data"]["num_val"]
    assert 0 < num_val < 8  # fewer than one row of RECON_COLUMNS
    with Image.open(tmp_path / "r" / "reconstructions.png") as grid:
        assert grid.size == (2 + num_val * (16 + 2), 2 + 2 * (16 + 2))  # one row of originals, one of reconstructions


def test_a_run_stopped_in_its_first_epoch_names_only_the_grids_it_wrote(tmp_path):
    run = tmp_path / "r"
    stopped = _train(run, epochs=1, max_steps=2)
    assert stopped["stopped"] == "max_steps" and stopped["samples"] is None and stopped["reconstructions"] is None
    assert not (run / "samples.png").exists() and not (run / "reconstructions.png").exists()
    done = _resume(run, max_steps=None)
    assert (done["samples"], done["reconstructions"]) == (str(run / "samples.png"), str(run / "reconstructions.png"))
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()


def test_loss_curves_are_a_grid_of_the_series_that_change(tmp_path):
    from genlab.training.plots import COLUMNS, PANEL_SIZE, plot_loss_curves, series
    from PIL import Image

    steps = [
        {"kind": "step", "step": s, "loss": 1.0 / s, "kl": s * 0.1, "gan_used": 1.0, "a": s, "b": -s, "c": s % 3}
        for s in range(1, 40)
    ]
    epochs = [{"kind": "epoch", "step": 10 * e, "quality_fd": 10.0 - e, "quality_confident": 0.0} for e in (1, 2, 3)]
    titles = [title for title, *_ in series(steps + epochs)]
    assert titles == [
        "loss",
        "kl",
        "a",
        "b",
        "c",
        "FD of N(0, I) samples (lower is better)",
    ]  # gan_used, confident flat
    plot_loss_curves(steps + epochs, tmp_path / "curves.png", "t")
    width, height = Image.open(tmp_path / "curves.png").size
    assert width == int(PANEL_SIZE[0] * COLUMNS * 100) and height > 2 * PANEL_SIZE[1] * 100  # 3 columns, 2 rows


def test_training_starts_with_a_dataset_line(tmp_path, capsys, image_folder):
    from genlab.config import TrainConfig as Config

    train(
        "vae",
        dict(TINY, image_size=16),
        Config(dataset=f"folder:{image_folder}", batch_size=4, epochs=1, quality_every=0, sample_count=4),
        tmp_path / "r",
    )
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert (
        first.startswith(f"data: folder:{image_folder}: ") and "training and" in first and "validation images" in first
    )
    assert "3x16x16" in first and "2 classes (cats, dogs)" in first  # RGB among the files: three channels


def test_epoch_lines_say_what_the_quality_figures_measure():
    from genlab.training.epoch_report import epoch_line

    record = {
        "epoch": 3,
        "step": 30,
        "loss": 2.0,
        "quality_fd": 12.3,
        "quality_kd": 0.02,
        "quality_confident": 0.5,
        "quality_class_entropy": 0.9,
    }
    assert epoch_line(record, 20, True) == (
        "epoch 3/20: loss 2; N(0, I) samples: fd 12.3, kd 0.02, confident 0.50, classes 0.90 (best)"
    )
