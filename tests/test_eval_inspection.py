"""``genlab eval anomaly`` on an inspection set (mvtec:PATH): image metrics per score component and pixel metrics of
the anomaly map, from a checkpoint and from its export, on a tiny MVTec AD tree written here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genlab.eval.anomaly import evaluate_anomaly
from genlab.eval.anomaly_metrics import pixel_metrics
from genlab.eval.inspection import evaluate_inspection, resize_maps
from PIL import Image

from genlab.errors import GenlabError
from tests.shared_models import train_tiny

SIDE = 32
# defect type -> the bright square (x, y, side) of each of its test images
SQUARES = {"crack": (4, 8, 8), "hole": (16, 16, 10)}
COMPONENT_FIELDS = {"auroc", "f1_max", "f1_threshold", "defects", "threshold", "fpr", "tpr", "meaning"}
PIXEL_FIELDS = {"auroc", "f1_max", "f1_threshold", "aupro", "fpr_limit", "regions", "pixels", "pixels_scored"}


def _image(seed: int, square: tuple[int, int, int] | None) -> Image.Image:
    """A dim grey ramp with a little noise, and a white square (x, y, side) on a defective image."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 60, SIDE, dtype=np.float32)[None, :] + np.linspace(0, 20, SIDE, dtype=np.float32)[:, None]
    array = (ramp + rng.integers(0, 10, (SIDE, SIDE))).astype(np.uint8)
    if square is not None:
        x, y, side = square
        array[y : y + side, x : x + side] = 255
    return Image.fromarray(array, "L")


def write_category(root: Path, train: int = 24, good: int = 4, per_defect: int = 3) -> Path:
    """One MVTec AD category: train/good/000.png..., test/{crack,good,hole}/000.png..., ground_truth/<defect>/
    000_mask.png... (each defective image's white square, and the same square in its mask)."""
    (root / "train" / "good").mkdir(parents=True)
    for i in range(train):
        _image(i, None).save(root / "train" / "good" / f"{i:03d}.png")
    (root / "test" / "good").mkdir(parents=True)
    for i in range(good):
        _image(100 + i, None).save(root / "test" / "good" / f"{i:03d}.png")
    for defect, square in SQUARES.items():
        (root / "test" / defect).mkdir(parents=True)
        (root / "ground_truth" / defect).mkdir(parents=True)
        for i in range(per_defect):
            _image(200 + i, square).save(root / "test" / defect / f"{i:03d}.png")
            mask = np.zeros((SIDE, SIDE), np.uint8)
            x, y, side = square
            mask[y : y + side, x : x + side] = 255
            Image.fromarray(mask, "L").save(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(category, run directory, export directory) of a tiny grey VAE trained one-class on the category's good
    images for a few steps."""
    from genlab.export.onnx_export import export_checkpoint

    base = tmp_path_factory.mktemp("inspection")
    category = write_category(base / "mvtec_anomaly_detection" / "tile")
    run = train_tiny(
        base / "run",
        "vae",
        {"image_size": SIDE, "channels": 1},
        dataset=f"mvtec:{category}",
        normal_class=0,
        batch_size=4,
        epochs=2,
        sample_count=4,
    )
    out = base / "export"
    export_checkpoint(run, out)
    return category, run, out


def _check_result(result: dict, dataset: str) -> None:
    assert result["evaluation"] == "anomaly"
    assert result["settings"]["dataset"] == dataset and result["settings"]["normal_class"] == 0
    assert result["settings"]["split"] == "test" and result["settings"]["percentile"] == 99.0
    assert result["counts"] == {"normal": 4, "anomalous": 6, "defect_types": {"crack": 3, "hole": 3}}
    assert result["calibrated"] is True
    assert {"score", "neg_elbo", "recon_error"} <= set(result["components"])
    for name, row in result["components"].items():
        assert set(row) == COMPONENT_FIELDS, name
        assert set(row["defects"]) == {"crack", "hole"}, name  # the defect folder names
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 < row["f1_max"] <= 1.0, name
        assert all(0.0 <= v <= 1.0 for v in row["defects"].values()), name
        assert row["threshold"] is not None, name  # every component is calibrated
        # rates over 4 good and 6 defective images
        assert 0.0 <= row["fpr"] <= 1.0 and row["fpr"] * 4 == pytest.approx(round(row["fpr"] * 4)), name
        assert 0.0 <= row["tpr"] <= 1.0 and row["tpr"] * 6 == pytest.approx(round(row["tpr"] * 6)), name
    pixel = result["pixel"]
    assert set(pixel) >= PIXEL_FIELDS and result["pixel_missing"] is None
    for key in ("auroc", "f1_max", "aupro"):
        assert 0.0 <= pixel[key] <= 1.0, key
    assert pixel["fpr_limit"] == 0.3 and pixel["regions"] == 6 and pixel["pixels"] == 10 * SIDE * SIDE
    assert pixel["map_size"] == pixel["mask_size"] == [SIDE, SIDE] and not pixel["resized"]
    json.dumps(result)


def test_a_checkpoint_and_its_export_are_judged_per_image_and_per_pixel(trained):
    category, run, export = trained
    dataset = f"mvtec:{category}"
    from_run = evaluate_anomaly(run, batch_size=4)  # the run's own dataset, normal class 0
    from_export = evaluate_anomaly(export, dataset=dataset)
    _check_result(from_run, dataset)
    _check_result(from_export, dataset)
    assert from_run["model"]["kind"] == "checkpoint" and from_export["model"]["kind"] == "onnx"
    # the thresholds are the model's calibration, the same in the checkpoint and its manifest
    from genlab.checkpoint import load_checkpoint
    from genlab.thresholds import quantile

    calibration = load_checkpoint(run / "last.pt")["calibration"]
    for name, row in from_export["components"].items():
        assert row["threshold"] == pytest.approx(quantile(calibration, name, 99.0)), name
        assert from_run["components"][name]["threshold"] == pytest.approx(row["threshold"]), name
    # torch and ONNX Runtime maps differ by at most a grey level here and there
    assert from_run["pixel"]["auroc"] == pytest.approx(from_export["pixel"]["auroc"], abs=0.02)


def test_the_pixel_metrics_are_those_of_the_exported_maps_and_the_masks(trained):
    from genlab.export.reader import ANOMALY_MAP, open_export

    from genlab.data import load_split

    category, _, export = trained
    result = evaluate_inspection(export, f"mvtec:{category}")
    test = load_split(f"mvtec:{category}", "test", image_size=SIDE, channels=1)
    maps = open_export(export).scores(test.images.numpy(), maps=True)[ANOMALY_MAP].mean(axis=1)
    expected = pixel_metrics(maps, test.masks.numpy())
    assert result.maps.pixel == expected
    assert result.to_json()["pixel"]["auroc"] == expected.auroc
    # image metrics: the test's own defect types, in folder order
    assert result.component("score").image.defect_types == ("crack", "hole")
    table = result.table()
    assert "crack" in table and "AUPRO@0.3" in table and "FPR@p99" in table


def test_a_map_of_another_size_is_resized_to_the_mask_size():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[:, :2] = 1.0
    resized = resize_maps(maps, (8, 8))
    assert resized.shape == (2, 8, 8) and resized.dtype == np.float32
    assert resized[:, 0].min() == pytest.approx(1.0) and resized[:, -1].max() == pytest.approx(0.0)
    assert resize_maps(maps, (4, 4)) is maps


def test_without_masks_there_are_image_metrics_only(trained, tmp_path):
    category, run, _ = trained
    bare = shutil.copytree(category, tmp_path / "tile", ignore=shutil.ignore_patterns("ground_truth"))
    result = evaluate_inspection(run, f"mvtec:{bare}")
    assert result.maps.pixel is None and result.maps.missing == "the dataset has no masks"
    assert result.to_json()["pixel"] is None and result.component("score").image.auroc is not None


def test_an_inspection_set_refuses_another_normal_class_or_split(trained, capsys):
    from genlab.cli.main import main

    category, run, _ = trained
    with pytest.raises(GenlabError, match="--normal-class 1 does not apply"):
        evaluate_anomaly(run, normal_class=1)
    assert main(["eval", "anomaly", str(run), "--dataset", f"mvtec:{category}", "--normal-class", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "good ones (class 0)" in err
    assert main(["eval", "anomaly", str(run), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluated on its test split" in err


def test_cli_on_the_export(trained):
    category, _, export = trained
    genlab = Path(sys.executable).with_name("genlab")
    done = subprocess.run(
        [str(genlab), "eval", "anomaly", str(export), "--dataset", f"mvtec:{category}", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _check_result(json.loads(done.stdout), f"mvtec:{category}")
