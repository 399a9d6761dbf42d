"""Sample quality during training: the measures, the best checkpoint, the collapse warning, the off switch."""

from __future__ import annotations

import json
import math

import pytest
import torch
from genlab.training.loop import train
from genlab.training.quality_watch import COLLAPSE_EPOCHS, QualityWatch

from genlab.checkpoint import load_checkpoint
from genlab.config import TrainConfig
from genlab.data import load_split
from tests.conftest import TINY

SMALL = dict(dataset="mnist-5k", normal_class=1, batch_size=32, log_every=5, sample_count=16, quality_samples=64)


CLASSIFIER: list[str] = []  # the file the tracker fixture's classifier is in


@pytest.fixture(scope="module")
def tracker():
    from genlab.quality import QualityTracker, classifier_for

    classifier = classifier_for("mnist-5k", "data", 28, 1, seed=0)
    CLASSIFIER[:] = [classifier]
    return QualityTracker(classifier, load_split("mnist-5k", "val").images, torch.zeros(400, 4))


def test_the_measures_tell_real_digits_from_noise_and_from_one_digit(tracker):
    train_images = load_split("mnist-5k", "train").images
    real = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:400]]
    ones = load_split("mnist-5k", "train").only_class(1).images[:400]
    noise = torch.randint(0, 256, (400, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    r, o, n = (tracker.measure(lambda z, y, images=images: images[: len(z)]) for images in (real, ones, noise))
    assert set(r) == {"fd", "kd", "confident", "class_entropy"}
    assert r["fd"] < 0.1 * o["fd"] and r["fd"] < 0.1 * n["fd"]  # real digits are far closer to the validation split
    assert abs(r["kd"]) < 0.05 * min(o["kd"], n["kd"])
    assert r["class_entropy"] > 0.97 and o["class_entropy"] < 0.3  # a single class is collapse
    assert r["confident"] > 0.85
    # noise fools the confidence alone (a classifier is sure of *something*), not the histogram or the distance
    assert n["class_entropy"] < 0.3 and n["fd"] > 10 * r["fd"]


def test_collapse_is_warned_once_after_epochs_far_below_the_best():
    watch = QualityWatch(tracker=None)
    verdicts = [
        watch.judge(epoch, {"quality_fd": fd}, "RUN/best.pt")
        for epoch, fd in enumerate([10.0, 5.0, 12.0, 9.0, 11.0, 13.0, 14.0, 30.0, 4.0], start=1)
    ]
    assert [v.improved for v in verdicts] == [True, True, False, False, False, False, False, False, True]
    warned = [i + 1 for i, v in enumerate(verdicts) if v.warning]
    assert warned == [7]  # epochs 5, 6, 7 were above 2 x 5.0 (epoch 3 was, but epoch 4 was not)
    assert "RUN/best.pt" in verdicts[6].warning and "epoch 2" in verdicts[6].warning
    assert watch.state.best_epoch == 9 and watch.state.epochs_far_below == 0
    assert COLLAPSE_EPOCHS == 3
    assert not QualityWatch(None).judge(1, {"quality_fd": math.nan}, "x").improved


def test_best_pt_is_written_on_improvement_only_and_export_prefers_it(tmp_path, monkeypatch, capsys):
    import genlab.quality

    scripted = iter([7.0, 3.0, 5.0, 4.0])  # epoch 2 is the best
    prior = iter(
        [19.0, 9.0]
    )  # the fitted prior's samples: last.pt's, far below best.pt's (more than 2x), then best.pt's
    monkeypatch.setattr(
        genlab.quality.QualityTracker,
        "measure",
        lambda self, decode, latents=None: {
            "fd": next(scripted) if latents is None else next(prior),
            "kd": 0.0,
            "confident": 1.0,
            "class_entropy": 1.0,
        },
    )
    summary = train("vae", dict(TINY), TrainConfig(**SMALL, epochs=4), tmp_path / "r")
    assert summary["best"]["epoch"] == 2 and summary["best"]["lowest_n01_fd"] == 3.0
    best, last = load_checkpoint(tmp_path / "r" / "best.pt"), load_checkpoint(tmp_path / "r")
    assert (best["epoch"], last["epoch"]) == (2, 4) and best["complete"] and best["calibration"]["n"] == 50
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["quality_fd"] for r in records if r["kind"] == "epoch"] == [7.0, 3.0, 5.0, 4.0]
    err = capsys.readouterr().err
    assert "(best)" in err and "N(0, I) samples: fd 3" in err
    # one sentence on the choice: epoch 2 kept, because the last epoch's fitted-prior samples measure far below
    assert "best.pt holds epoch 2, whose N(0, I) samples measured best: the last epoch's fitted-prior samples" in err

    from genlab.cli.main import main

    assert main(["export", str(tmp_path / "r"), "--out", str(tmp_path / "e"), "--no-bento", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["checkpoint"].endswith("best.pt") and exported["epoch"] == 2
    assert (
        main(
            [
                "export",
                str(tmp_path / "r"),
                "--out",
                str(tmp_path / "e2"),
                "--no-bento",
                "--checkpoint",
                "last",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["epoch"] == 4
    assert main(["info", str(tmp_path / "r"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["epoch"] == 4 and info["best_checkpoint"]["epoch"] == 2
    assert info["sample_quality"]["lowest_fd_epoch"] == 2 and info["sample_quality"]["lowest_fd"] == 3.0
    assert info["best_checkpoint"]["why"].startswith("best.pt holds epoch 2")
    assert info["best_checkpoint"]["prior_sample_quality"]["fd"] == 9.0
    # after training: the latent prior fitted to the codes, and its samples measured once for last.pt and best.pt
    assert best["prior"] is not None and (last["prior_quality"]["fd"], best["prior_quality"]["fd"]) == (19.0, 9.0)
    assert "mixture" in info["latent_prior"]


def test_quality_every_0_turns_it_off(tmp_path):
    summary = train("gan", dict(TINY), TrainConfig(**SMALL, epochs=2, quality_every=0), tmp_path / "r")
    assert summary["best"] is None and not (tmp_path / "r" / "best.pt").exists()
    epochs = load_checkpoint(tmp_path / "r")["metrics"]["epochs"]
    assert not any(k.startswith("quality_") for e in epochs for k in e)


def test_every_epoch_logs_the_measures_of_a_real_run(tmp_path):
    train("vaegan", dict(TINY), TrainConfig(**SMALL, epochs=2), tmp_path / "r")
    epochs = load_checkpoint(tmp_path / "r")["metrics"]["epochs"]
    for record in epochs:
        assert {"quality_fd", "quality_kd", "quality_confident", "quality_class_entropy", "quality_seconds"} <= set(
            record
        )
        assert (
            record["quality_fd"] > 0
            and 0 <= record["quality_confident"] <= 1
            and 0 <= record["quality_class_entropy"] <= 1
        )


@pytest.mark.parametrize("last_fd, verdict", [(5.0, "measure closer than those of"), (15.0, "within 2x of each other")])
def test_best_pt_becomes_the_last_epoch_unless_its_fitted_prior_samples_are_far_below(
    tmp_path, monkeypatch, capsys, last_fd, verdict
):
    """Closer than the collapse factor, lenet FD does not rank checkpoints reliably: the last epoch is kept."""
    import genlab.quality

    tracked = iter([7.0, 3.0, 5.0, 4.0])  # N(0, I) draws: epoch 2 is the best
    prior = iter([last_fd, 8.0])  # fitted-prior draws: last.pt's, then best.pt's
    monkeypatch.setattr(
        genlab.quality.QualityTracker,
        "measure",
        lambda self, decode, latents=None: {
            "fd": next(tracked) if latents is None else next(prior),
            "kd": 0.0,
            "confident": 1.0,
            "class_entropy": 1.0,
        },
    )
    summary = train("vae", dict(TINY), TrainConfig(**SMALL, epochs=4), tmp_path / "r")
    best, last = load_checkpoint(tmp_path / "r" / "best.pt"), load_checkpoint(tmp_path / "r")
    assert best["epoch"] == last["epoch"] == 4 and best["complete"] and summary["best"]["epoch"] == 4
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("best.pt holds")]
    assert len(lines) == 1 and lines[0].startswith("best.pt holds the last epoch, 4") and verdict in lines[0], lines
    assert "epoch 2, whose N(0, I) samples measured best" in lines[0]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["selection"] == lines[0]


def test_class_fidelity_is_the_share_of_samples_drawn_as_their_label(tracker):
    """A conditional model's samples are measured against the labels they were drawn for."""
    from genlab.quality import QualityTracker

    val = load_split("mnist-5k", "val")
    labelled = QualityTracker(CLASSIFIER[0], val.images, torch.zeros(len(val), 4), labels=val.labels)
    right = labelled.measure(lambda z, y: val.images[: len(z)])
    labelled.labels = (val.labels + 1) % 10
    wrong = labelled.measure(lambda z, y: val.images[: len(z)])
    assert right["class_fidelity"] > 0.9 and wrong["class_fidelity"] < 0.1
    assert "class_fidelity" not in tracker.measure(lambda z, y: val.images[: len(z)])
