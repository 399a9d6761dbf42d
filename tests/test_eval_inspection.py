"""``genlab eval anomaly`` on an inspection set (mvtec:PATH): image metrics per score component and pixel metrics of
the anomaly map, from a checkpoint and from its export, on a tiny MVTec AD tree written here; the result saved beside
the run with the figure of its highest-scored images, and shown by ``genlab report``."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genlab.eval.anomaly import evaluate_anomaly
from genlab.eval.anomaly_metrics import pixel_metrics
from genlab.eval.inspection import InspectionResult, evaluate_inspection, resize_maps
from genlab.eval.worst_maps import WorstImages, figure_pixels, highest_scored, write_worst_figure
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

    ckpt = load_checkpoint(run / "last.pt")
    calibration = ckpt["calibration"]
    # an inspection set's model scores with its local map (genlab.models.local_map), one channel, in the manifest
    from genlab.export.reader import ANOMALY_MAP, read_manifest

    from genlab.models.local_map import LOCAL_DEVIATION, LOCAL_MAP_MEANING

    assert ckpt["model_config"]["anomaly_map"] == "local"
    assert ckpt["score_fit"]["primary_components"] == [LOCAL_DEVIATION]
    manifest = read_manifest(export)
    assert manifest["scores"]["map_description"] == LOCAL_MAP_MEANING
    (map_io,) = [o for o in manifest["graphs"]["score"]["outputs"] if o["name"] == ANOMALY_MAP]
    assert map_io["shape"] == ["batch", 1, SIDE, SIDE]
    # the threshold's check on unseen normal images: leave-one-out over the few held-out images, with a warning
    assert calibration["check"]["warning"] and 0.0 <= calibration["check"]["unseen_fpr"] <= 1.0
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
    # the JSON reads back as the same typed result (what genlab report reads)
    assert InspectionResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    # the highest-scored images keep their maps, at the images' size
    worst = result.worst
    assert worst is not None and worst.rows == 10 and worst.defective == 6 and worst.score == "score"
    assert worst.maps.shape == (10, SIDE, SIDE) and worst.defect_types[6:] == ("good",) * 4
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
    assert result.worst is None and InspectionResult.from_json(result.to_json()) == result


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


def test_the_highest_scored_defective_and_good_images_are_picked_highest_first():
    scores = np.array([0.1, 5.0, 3.0, 3.0, 9.0, 0.5, 7.0])
    labels = np.array([0, 1, 0, 1, 0, 1, 1])
    rows, defective = highest_scored(scores, labels, 2)
    assert rows.tolist() == [6, 1, 4, 2] and defective == 2
    rows, defective = highest_scored(scores, labels, 10)  # fewer than k of each: all of them
    assert rows.tolist() == [6, 1, 3, 5, 4, 2, 0] and defective == 4


def test_the_figure_has_a_row_per_image_and_keeps_the_images_colour(tmp_path):
    rows, side = 3, 16
    images = np.zeros((rows, 3, side, side), np.uint8)
    images[:, 0] = 255  # pure red
    maps = np.linspace(0.0, 2.0, rows * side * side, dtype=np.float32).reshape(rows, side, side)
    masks = np.zeros((rows, side, side), bool)
    masks[0, 4:8, 4:8] = True
    worst = WorstImages(
        "mvtec:/data/tile", "score", 1.0, images, maps, masks, ("crack", "good", "good"), np.array([3.0, 2.0, 0.5]), 1
    )
    assert worst.map_range == (0.0, 2.0)
    path = write_worst_figure(worst, tmp_path / "eval" / "figure.png")
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert (figure.shape[1], figure.shape[0]) == figure_pixels(rows) and figure_pixels(rows)[1] > figure_pixels(2)[1]
    # the image panels show the image in its own colour: at least three panels' worth of pure red pixels
    panel = figure_pixels(1)[1] - figure_pixels(0)[1]
    assert np.all(figure == (255, 0, 0), axis=-1).sum() > rows * (0.6 * panel) ** 2
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["figure.png"]  # no temp file left


def _table(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of a report's table as {column: cell}."""
    lines = markdown.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, *rows = ([c.strip() for c in line.strip("|").split(" | ")] for line in [lines[0], *lines[2:]])
    return [dict(zip(header, row)) for row in rows]


def test_a_saved_inspection_result_and_its_figure_are_in_the_report(trained, tmp_path, capsys):
    from genlab.cli.main import main
    from genlab.eval.anomaly import result_name
    from genlab.eval.report import ReportSettings, write_report
    from genlab.eval.results import save_result

    category, trained_run, _ = trained
    run, fresh = (shutil.copytree(trained_run, tmp_path / name) for name in ("tile-vae", "fresh"))
    # genlab eval anomaly --save: the result and the figure of the 6 defective and 4 good images beside the run
    assert main(["eval", "anomaly", str(run), "--save", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    figure = Path(out["worst_figure"])
    assert figure == run / "eval" / "inspection-mvtec-tile-worst.png"
    assert Image.open(figure).size == figure_pixels(6 + 4)
    saved = json.loads(Path(out["saved_to"]).read_text())
    assert InspectionResult.from_json(saved).to_json() == {
        k: v for k, v in out.items() if k not in ("saved_to", "worst_figure")
    }
    # numbers the tiny set would never give (it scores 1.0 nearly everywhere), each in its own column
    saved["components"]["score"].update(
        auroc=0.8125, f1_max=0.6875, fpr=0.25, tpr=5 / 6, defects={"crack": 0.9375, "hole": 0.625}
    )
    saved["pixel"].update(auroc=0.7331, aupro=0.4219, f1_max=0.5555)
    save_result(run, result_name(saved), saved)

    write_report([run, fresh], tmp_path / "rep", ReportSettings(compute=False))
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    title = f"Inspection set: mvtec:{category}:test good vs defective (primary score)"
    assert _table(md, title) == [  # the run without an inspection result has no row
        {
            "run": "tile-vae",
            "image AUROC": "0.8125",
            "image F1-max": "0.6875",
            "pixel AUROC": "0.7331",
            "AUPRO@0.3": "0.4219",
            "pixel F1-max": "0.5555",
            "FPR on good images at p99 threshold": "0.25",
            "TPR on defective images at p99 threshold": "0.8333",
            "image AUROC crack (3)": "0.9375",
            "image AUROC hole (3)": "0.625",
            "anomaly map (mean over channels)": "32x32, 6 regions",
            "note": "",
        }
    ]
    assert [row["note"] for row in _table(md, "Anomaly detection")] == [
        "inspection set: see its table",
        "not computed (report --no-compute): run `genlab eval anomaly`",
    ]
    copied = tmp_path / "rep" / "images" / "tile-vae-inspection-mvtec-tile-worst.png"
    assert copied.read_bytes() == figure.read_bytes()
    assert f"({copied.relative_to(tmp_path / 'rep')})" in md and f"src='{copied.relative_to(tmp_path / 'rep')}'" in page
    assert html.escape(title) in page

    # a report that may compute evaluates the run on its own inspection set and saves the result and the figure
    write_report([fresh], tmp_path / "rep-2", ReportSettings(n=8, translation=False))
    assert (fresh / "eval" / "inspection-mvtec-tile-worst.png").is_file()
    (row,) = _table((tmp_path / "rep-2" / "report.md").read_text(), title)
    assert row["run"] == "fresh" and 0.0 <= float(row["AUPRO@0.3"]) <= 1.0
    assert (tmp_path / "rep-2" / "images" / "fresh-inspection-mvtec-tile-worst.png").is_file()
