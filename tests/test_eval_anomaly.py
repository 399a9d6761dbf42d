"""Anomaly evaluation: metrics on constructed cases (vs scikit-learn), thresholds, end to end, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from genlab.eval.anomaly import evaluate_anomaly, ranking_metrics, result_name, scores_to_metrics, threshold_rates

from genlab.errors import GenlabError

PERCENTILES = [round(0.1 * i, 1) for i in range(1001)]


def test_auroc_and_auprc_on_a_constructed_case():
    # perfectly separated: every anomaly scores above every normal image
    is_anomaly = np.array([0, 0, 0, 1, 1], bool)
    assert ranking_metrics(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), is_anomaly) == {"auroc": 1.0, "auprc": 1.0}
    # by hand: anomalies 0.9, 0.4 vs normals 0.2, 0.5, 0.3: 5 of 6 pairs ranked right -> AUROC 5/6;
    # ranking 0.9(A) 0.5(N) 0.4(A) ...: precision 1/1 and 2/3 at the anomalies -> AP 5/6
    got = ranking_metrics(np.array([0.2, 0.5, 0.3, 0.9, 0.4]), is_anomaly)
    assert got["auroc"] == pytest.approx(5 / 6) and got["auprc"] == pytest.approx(5 / 6)
    # swapped roles: a score that ranks normals higher gives AUROC 0
    assert ranking_metrics(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), is_anomaly)["auroc"] == 0.0


def test_metrics_equal_scikit_learn_on_random_scores():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = rng.normal(size=500) + labels * 0.8
    scores[:50] = np.round(scores[:50], 1)  # some ties
    got = ranking_metrics(scores, labels)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_rates_at_the_calibrated_threshold():
    # calibration: score "s" uniform on 0..10 over the grid, so the 90th percentile is 9.0
    cal = {"percentiles": PERCENTILES, "scores": {"s": [p / 10 for p in PERCENTILES]}}
    scores = {"s": np.array([1.0, 5.0, 9.5, 8.0, 9.2, 12.0]), "uncalibrated": np.arange(6.0)}
    is_anomaly = np.array([0, 0, 0, 1, 1, 1], bool)
    rows = scores_to_metrics(scores, is_anomaly, cal, 90.0, {"s": "a score"})
    assert rows["s"]["threshold"] == pytest.approx(9.0)
    assert rows["s"]["tpr"] == pytest.approx(2 / 3) and rows["s"]["fpr"] == pytest.approx(1 / 3)
    assert rows["s"]["meaning"] == "a score"
    assert rows["uncalibrated"]["threshold"] is None and rows["uncalibrated"]["tpr"] is None
    assert threshold_rates(np.array([1.0, 2.0]), np.array([True, False]), 1.5) == {"tpr": 0.0, "fpr": 1.0}


def test_end_to_end_one_class(one_class_vae):
    result = evaluate_anomaly(one_class_vae, batch_size=64)  # defaults: the run's dataset and normal class
    assert result["settings"] == {
        "dataset": "mnist-5k",
        "normal_class": 1,
        "ood": None,
        "split": "test",
        "data_dir": "data",
        "percentile": 99.0,
    }
    assert result["counts"] == {"normal": 50, "anomalous": 450}  # mnist-5k test: 50 per class
    assert set(result["components"]) == {
        "score",
        "neg_elbo",
        "recon_error",
        "relative_recon_error",
        "stroke_error",
        "kl",
        "latent_distance",
        "low_contrast",
    }
    from genlab.checkpoint import load_checkpoint
    from genlab.thresholds import quantile

    calibration = load_checkpoint(one_class_vae)["calibration"]
    for name, row in result["components"].items():
        # each threshold is the model's own 99th percentile of held-out normal scores, never fitted on the test set
        assert row["threshold"] == pytest.approx(quantile(calibration, name, 99.0)), name
        # the rates count images: k of the 50 normal and j of the 450 anomalous test images
        assert row["fpr"] * 50 == pytest.approx(round(row["fpr"] * 50)), name
        assert row["tpr"] * 450 == pytest.approx(round(row["tpr"] * 450)), name
    # the negative ELBO of a VAE trained on ones (50 steps) already separates other digits (the primary score's
    # latent distance needs a trained encoder: benchmarks/one_class.py measures it with the real budget)
    assert result["components"]["neg_elbo"]["auroc"] > 0.8
    assert result_name(result) == "anomaly-mnist-5k-test-c1-vs-rest-p99"
    json.dumps(result)


def test_end_to_end_out_of_distribution(one_class_vae, fake_mnist_dir):
    result = evaluate_anomaly(one_class_vae, ood="fashion-mnist", data_dir=str(fake_mnist_dir), percentile=95)
    assert result["counts"] == {"normal": 50, "anomalous": 50}  # class 1 of mnist-5k test vs the fake set
    assert result["components"]["neg_elbo"]["auroc"] > 0.9  # uniform noise is far from a digit
    assert result_name(result) == "anomaly-mnist-5k-test-c1-vs-ood-fashion-mnist-p95"


def test_a_conditional_model_scores_unlabelled_images_under_its_best_class(conditional_vaegan, fake_mnist_dir):
    result = evaluate_anomaly(conditional_vaegan, ood="fashion-mnist", data_dir=str(fake_mnist_dir))
    assert result["counts"] == {"normal": 500, "anomalous": 50}  # all of mnist-5k test vs the fake set
    assert "score" in result["components"] and "label" not in result["components"]  # the class used is not a score
    from genlab.checkpoint import load_checkpoint
    from genlab.thresholds import quantile

    calibration = load_checkpoint(conditional_vaegan)["calibration"]
    for name, row in result["components"].items():  # thresholds from the model's calibration, one per score
        assert row["threshold"] == pytest.approx(quantile(calibration, name, 99.0)), name


def test_bad_class_or_dataset_is_one_clear_error(one_class_vae, tmp_path):
    with pytest.raises(GenlabError, match="normal class 12 is not in mnist-5k:test"):
        evaluate_anomaly(one_class_vae, normal_class=12)
    with pytest.raises(GenlabError, match="unknown dataset 'nope'"):
        evaluate_anomaly(one_class_vae, ood="nope")
    with pytest.raises(GenlabError, match="fashion-mnist: dataset files not found"):
        evaluate_anomaly(one_class_vae, ood="fashion-mnist", data_dir=str(tmp_path))
    with pytest.raises(GenlabError, match="percentile"):
        evaluate_anomaly(one_class_vae, percentile=101)


def test_all_class_model_needs_a_class_or_ood(all_class_gan):
    with pytest.raises(GenlabError, match="--normal-class"):
        evaluate_anomaly(all_class_gan)
    result = evaluate_anomaly(all_class_gan, normal_class=3)
    assert result["counts"] == {"normal": 50, "anomalous": 450}
    assert set(result["components"]) == {
        "score",
        "discriminator",
        "izi_f",
        "recon_error",
        "relative_recon_error",
        "stroke_error",
        "latent_distance",
        "features_distance",
        "low_contrast",
    }


def test_cli_anomaly(one_class_vae, capsys):
    from genlab.cli.main import main

    assert main(["eval", "anomaly", str(one_class_vae), "--json", "--save"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["normal_class"] == 1
    assert (one_class_vae / "eval" / f"{result_name(result)}.json").is_file()

    assert main(["eval", "anomaly", str(one_class_vae), "--normal-class", "3"]) == 0
    out = capsys.readouterr().out
    assert "class 3 vs other classes" in out and "AUROC" in out and "TPR" in out

    assert main(["eval", "anomaly", str(one_class_vae), "--normal-class", "42"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "normal class 42" in err
    assert main(["eval", "anomaly", str(one_class_vae), "--ood", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_model_not_trained_one_class_on_the_normal_class_is_warned_about(all_class_gan, one_class_vae, capsys):
    """A model trained on all digits (or one-class on another digit) scores the chosen class no more normal than the
    rest: the result says so, and the command prints the warning on stderr."""
    from genlab.cli.main import main

    result = evaluate_anomaly(all_class_gan, normal_class=3)
    assert len(result["warnings"]) == 1 and "trained on all classes, not one-class on class 3" in result["warnings"][0]
    assert (
        "one-class on class 1, not one-class on class 3"
        in evaluate_anomaly(one_class_vae, normal_class=3)["warnings"][0]
    )
    assert evaluate_anomaly(one_class_vae)["warnings"] == []  # trained one-class on the class it is evaluated on
    assert main(["eval", "anomaly", str(all_class_gan), "--normal-class", "3"]) == 0
    err = capsys.readouterr().err
    assert "warning: the model was trained on all classes" in err and "--normal-class 3" in err


def test_an_anomaly_result_carries_its_provenance(one_class_vae):
    from genlab.files import file_sha256

    result = evaluate_anomaly(one_class_vae)
    p = result["provenance"]
    assert p["model"] == {"kind": "checkpoint", "sha256": file_sha256(one_class_vae / "last.pt")}
    assert p["reference"]["dataset"] == "mnist-5k" and p["reference"]["split"] == "test" and p["n"] == 500
    assert {"genlab", "torch", "onnxruntime", "torch_fidelity"} <= set(p["versions"]) and p["wall_s"] > 0
