"""Report, sweep and the translation experiment on tiny runs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from genlab.eval.report import ReportSettings, write_report
from genlab.eval.results import save_result
from genlab.eval.translation import evaluate_translation, shift_by_fraction

from genlab.errors import GenlabError
from tests.shared_models import train_tiny


def test_shifts_are_deterministic_and_of_the_asked_size():
    images = torch.arange(4 * 20 * 20, dtype=torch.float32).reshape(4, 1, 20, 20)
    a, pixels = shift_by_fraction(images, 0.1, seed=3)
    b, _ = shift_by_fraction(images, 0.1, seed=3)
    assert torch.equal(a, b) and 1.4 <= pixels <= 2.9  # 2 px in a random direction, rounded per axis
    same, none = shift_by_fraction(images, 0.0, seed=3)
    assert torch.equal(same, images) and none == 0.0


class Memoriser:
    """A model double that 'reconstructs' the first (unshifted) batch it saw, whatever it is given."""

    kind, family, dataset, has_encoder, normal_class = "checkpoint", "vae", "mnist-5k", True, None
    image_shape, latent_dim, calibration, score_descriptions = (1, 28, 28), 2, None, {}
    info = {"family": "vae", "dataset": "mnist-5k"}
    memory = None

    def reconstruct(self, images, labels=None, batch_size=256, desc=None):  # ModelSource.reconstruct
        if self.memory is None:
            self.memory = images.copy()
        return self.memory


def test_translation_error_grows_with_shift():
    result = evaluate_translation(Memoriser(), n=30)  # shift 0 comes first: that is what it memorises
    mse = [row["recon_error"] for row in result["shifts"]]
    assert [row["fraction"] for row in result["shifts"]] == [0.0, 0.025, 0.05, 0.075, 0.1]
    assert mse[0] == 0.0 and all(b > a for a, b in zip(mse, mse[1:]))
    assert result["recon_error"] == 0.0 and result["worst_over_unshifted"] is None


def test_translation_on_a_tiny_vae_and_a_gan(one_class_vae, all_class_gan):
    for run in (one_class_vae, all_class_gan):  # a GAN reconstructs through f-AnoGAN's encoder
        result = evaluate_translation(run, n=40, fractions=(0.0, 0.1))
        assert result["settings"]["n"] == 40 and len(result["shifts"]) == 2
        assert all(0.0 < row["recon_error"] < 1.0 for row in result["shifts"])


def _columns(markdown: str, title: str) -> list[str]:
    section = markdown.split(f"## {title}\n\n", 1)[1]
    return [c.strip() for c in section.splitlines()[0].strip("|").split(" | ")]


def test_report_tables_images_and_separate_settings(one_class_vae, all_class_gan, tmp_path):
    # FID results as eval.fid saves them: two settings (N) for the VAE, another extractor for the GAN
    from types import SimpleNamespace

    from genlab.eval.fid import result_name as fid_name
    from genlab.eval.fid import settings_line

    inception = SimpleNamespace(label="FID", name="inception-v3-compat", weights_identity="abc123")
    lenet = SimpleNamespace(
        label="FD (genlab-lenet features)", name="genlab-lenet-mnist-5k", weights_identity="lenet-9f"
    )
    for run, n, fx, value in (
        (one_class_vae, 64, inception, 80.5),
        (one_class_vae, 128, inception, 71.0),
        (all_class_gan, 64, lenet, 12.25),
    ):
        result = {
            "evaluation": "fid",
            "values": {"fid" if fx is inception else "lenet_fd": value, "kid": 0.01, "kid_std": 0.002},
            "settings": settings_line(fx, n, 0, "mnist-5k:test", n, "samples", (1, 28, 28)),
            "n": n,
            "seed": 0,
            "extractor": "inception" if fx is inception else "lenet",
            "reference": "mnist-5k:test",
            "of": "samples",
        }
        save_result(run, fid_name(result), result)
    result = write_report([one_class_vae, all_class_gan], tmp_path / "rep", ReportSettings(n=50))
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    for text in (md, page):
        assert "vae-1" in text and "gan" in text and "mnist-5k (class 1)" in text
        assert "80.5" in text and "71" in text and "12.25" in text
        # each run's calibrated threshold, checked on unseen normal images (leave-one-out)
        assert "threshold on unseen normal images" in text and "(leave-one-out)" in text
    # each FID setting has its own column; a column never holds numbers of two settings
    fid_columns = _columns(md, "FID / KID")
    assert (
        len([c for c in fid_columns if c.startswith("fid [")]) == 2
        and len([c for c in fid_columns if c.startswith("lenet_fd [")]) == 1
    )
    assert len([c for c in fid_columns if c.startswith("kid [")]) == 3  # kid under three settings: three columns
    assert any("samples n=64" in c and "inception" in c for c in fid_columns) and any(
        "samples n=128" in c for c in fid_columns
    )
    for column in fid_columns:
        assert len(set(re.findall(r"samples n=\d+", column))) <= 1
    assert "0.01 ± 0.002" in md
    # cheap results computed and saved beside the runs: reconstruction / translation, anomaly AUROC
    rec_columns = _columns(md, "Reconstruction and translation")
    assert any(c.startswith("recon_error, no shift (mnist-5k:test, n=50") for c in rec_columns)
    assert any("shift 10.0%" in c for c in rec_columns)
    assert any(
        c.startswith("AUROC score (mnist-5k:test class 1 vs other classes)") for c in _columns(md, "Anomaly detection")
    )
    assert "trained on all classes" in md
    assert list((one_class_vae / "eval").glob("translation-*.json")) and list(
        (one_class_vae / "eval").glob("anomaly-*.json")
    )
    # image grids and loss curves copied beside the report and linked from both files
    for name in ("vae-1-samples.png", "vae-1-reconstructions.png", "vae-1-loss_curves.png", "gan-samples.png"):
        assert (tmp_path / "rep" / "images" / name).stat().st_size > 0
        assert f"(images/{name})" in md and f"src='images/{name}'" in page
    assert len(result["runs"]) == 2


def test_report_shows_a_conditional_run_its_class_fidelity_and_a_row_per_class(
    conditional_vaegan, one_class_vae, tmp_path
):
    import shutil

    from PIL import Image

    run = tmp_path / "cvaegan"  # a copy without the results other tests saved beside the shared run
    shutil.copytree(conditional_vaegan, run, ignore=shutil.ignore_patterns("eval"))
    write_report([run, one_class_vae], tmp_path / "rep", ReportSettings(n=30, fidelity_n=100))
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "| cvaegan | vaegan (conditional) | mnist-5k (10 classes) |" in md
        and "| vae-1 | vae | mnist-5k (class 1) |" in md
    )
    # class fidelity computed and saved beside the run, shown with the classifier's test accuracy (its ceiling)
    (saved,) = (run / "eval").glob("class_fidelity-n100-seed0.json")
    result = json.loads(saved.read_text())
    assert 0.0 <= result["class_fidelity"] <= 1.0 and list(result["class_fidelity_per_class"]) == [
        str(k) for k in range(10)
    ]
    columns = _columns(md, "Class fidelity")
    assert any(c.startswith("class fidelity (samples n=100 seed=0") for c in columns)
    assert any(c.startswith("class fidelity per class (samples n=100") for c in columns)
    assert any(c.startswith("classifier test accuracy (lenet-") and "mnist-5k:test" in c for c in columns)
    row = next(line for line in md.split("## Class fidelity", 1)[1].splitlines() if line.startswith("| cvaegan |"))
    assert f"{result['class_fidelity']:.3f}" in row and "9: " in row
    assert "n/a: not a conditional model" in md  # the one-class VAE's row
    # the grid: 8 samples in each of 10 rows, copied beside the report and linked from both files
    grid = tmp_path / "rep" / "images" / "cvaegan-samples_by_class.png"
    assert Image.open(grid).size == (2 + 8 * (28 + 2), 2 + 10 * (28 + 2))
    assert "(images/cvaegan-samples_by_class.png)" in md and "src='images/cvaegan-samples_by_class.png'" in page
    # a report of unconditional runs only has no class fidelity table
    write_report([one_class_vae], tmp_path / "rep-1", ReportSettings(compute=False))
    assert "## Class fidelity" not in (tmp_path / "rep-1" / "report.md").read_text()


def test_report_without_compute_says_what_to_run(tmp_path):
    run = train_tiny(tmp_path / "fresh", "vae", max_steps=3, epochs=1, batch_size=16)
    write_report([run], tmp_path / "rep", ReportSettings(compute=False))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "run `genlab eval fid" in md and "(incomplete)" in md
    assert not (run / "eval").exists()
    with pytest.raises(GenlabError, match="checkpoint not found"):
        write_report([tmp_path / "missing"], tmp_path / "rep2")


def test_sweep_trains_resumes_and_reports(tmp_path, capsys):
    from genlab.cli.main import main

    argv = [
        "sweep",
        "--families",
        "vae,gan",
        "--lrs",
        "1e-3,2e-3",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
        "--set",
        "width=4",
        "--set",
        "hidden=16",
        "--set",
        "latent_dim=4",
        "--set",
        "quality_every=0",
        "--normal-class",
        "1",
        "--translate-experiment",
        "--n",
        "20",
        "--out",
        str(tmp_path / "sw"),
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    names = sorted(p.name for p in (tmp_path / "sw").iterdir())
    assert names == ["gan-lr0.001", "gan-lr0.002", "report", "vae-lr0.001", "vae-lr0.002"]
    assert [r["resumed"] for r in result["runs"]] == [False] * 4
    md = (tmp_path / "sw" / "report" / "report.md").read_text()
    assert all(f"| {name} |" in md for name in names if name != "report")
    assert "shift 10.0%" in md and "AUROC score" in md
    # a second sweep resumes the runs (nothing retrained: steps unchanged) and rewrites the report
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["resumed"] for r in again["runs"]] == [True] * 4 and [r["step"] for r in again["runs"]] == [2] * 4
    assert main(["sweep", "--families", "vae,nope", "--out", str(tmp_path / "x")]) == 2
