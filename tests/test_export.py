"""The export step: ONNX graphs, manifest, parity, clear errors, atomic publish, BentoML store.

The shared tiny checkpoints (tests/shared_models.py: mnist-5k, calibration included) and their real
exports are used per family, plain and class-conditional; the error tests work on copies of those exports. Tests
that only need an export to *fail* or to be *re-published* replace the (slow, ~5 s) dynamo
exporter with a copy of the already exported graphs, so everything else in
``export_checkpoint`` still runs for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import genlab.export.onnx_export as onnx_export
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from genlab.cli.main import main
from genlab.export.onnx_export import DecoderGraph, EncoderGraph, ExportFailed, ScoreGraph, export_checkpoint
from genlab.export.reader import (
    FORMAT_VERSION,
    ExportError,
    choose_providers,
    open_export,
    read_manifest,
    sample_latents,
)

from genlab import __version__
from genlab.calibration import score_images
from genlab.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from genlab.errors import GenlabError
from genlab.latents import balanced_labels
from genlab.measures import ANOMALY_MAP_MEANING
from genlab.models import MODELS
from genlab.pixels import uint8_to_model
from tests.conftest import FAMILIES, TINY
from tests.shared_models import STEPS

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 3, 17)
IMAGE_SHAPE = (1, 28, 28)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _private_bentoml_home(tmp_path_factory, monkeypatch):
    """Nothing here may touch the user's BentoML store, even by accident."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path_factory.getbasetemp() / "bentoml-never-used"))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")


# the shared model of each family (a one-class VAE, a GAN and a VAE-GAN of all ten digits) and its conditional one
SHARED = {"vae": "vae-1", "gan": "gan", "vaegan": "vaegan", **{f"{f}-conditional": f"{f}-cond" for f in FAMILIES}}


@pytest.fixture(scope="module")
def build(trained):
    """family -> a trained tiny checkpoint (the shared one, read only) and its export, opened on first use."""
    built: dict[str, SimpleNamespace] = {}

    def get(family: str) -> SimpleNamespace:
        """``family``, or ``family-conditional``: a conditional model of all ten digits."""
        if family not in built:
            key = SHARED[family]
            out = trained.export(key)
            ckpt = load_checkpoint(trained.checkpoint(key))
            built[family] = SimpleNamespace(
                family=family,
                checkpoint=trained.checkpoint(key),
                ckpt=ckpt,
                out=out,
                manifest=read_manifest(out),
                model=model_from_checkpoint(ckpt),
                steps=STEPS[key],
            )
        return built[family]

    return get


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, build) -> SimpleNamespace:
    return build(request.param)


@pytest.fixture
def fast_exporter(build, monkeypatch):
    """``fast_exporter(family)``: that family's build, and from now on torch.onnx.export replaced by a copy of its
    graphs."""

    def use(family: str) -> SimpleNamespace:
        built = build(family)  # the real export first, if this is the first test to need it

        def copy_graph(module, example, spec, path, opset):
            shutil.copyfile(built.out / path.name, path)

        monkeypatch.setattr(onnx_export, "_export_graph", copy_graph)
        return built

    return use


def images_for(model, batch: int, seed: int) -> torch.Tensor:
    """uint8 images: decoded samples and uniform noise, mixed."""
    z = torch.from_numpy(sample_latents(batch, model.cfg.latent_dim, seed))
    with torch.no_grad():
        images = DecoderGraph(model)(z)
    noise = torch.randint(
        0, 256, (batch, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    images[::2] = noise[::2]
    return images


def assert_close(got: np.ndarray, expected: torch.Tensor, what: str) -> None:
    expected = expected.numpy()
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape, what
    # 1e-4 absolute, and relative for values above 1 (negative ELBOs are hundreds of nats)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=what)


def grey_levels(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two anomaly maps (multiples of 1/255), in grey levels."""
    return int(np.rint(np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255).max(initial=0))


def reference_map(images: np.ndarray, recons: np.ndarray) -> np.ndarray:
    """genlab.measures.ANOMALY_MAP_MEANING in NumPy: float32 |image - reconstruction| / 255 of uint8 pixels."""
    return (np.abs(images.astype(np.int16) - recons.astype(np.int16)) / np.float32(255)).astype(np.float32)


def cli_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def leftovers(out: Path) -> list[str]:
    """Anything at ``out`` or beside it that an export into ``out`` may have written."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


# -- every family: graphs, parity, manifest -----------------------------------------------------
def test_graphs_load_and_match_torch_at_several_batch_sizes(exported):
    model, family = exported.model, exported.family
    exp = open_export(exported.out, providers="cpu")
    expected_graphs = {"decoder", "score"} | ({"encoder"} if MODELS[family].has_encoder else set())
    assert set(exp.graphs) == expected_graphs and exp.has_encoder == MODELS[family].has_encoder
    assert exp.providers == {g: "CPUExecutionProvider" for g in expected_graphs}
    assert exp.family == family and exp.latent_dim == TINY["latent_dim"] and exp.image_shape == IMAGE_SHAPE
    names = list(MODELS[family].score_descriptions)
    assert exp.score_names == names

    for batch in BATCHES:
        z = sample_latents(batch, exp.latent_dim, seed=batch)
        with torch.no_grad():
            want = DecoderGraph(model)(torch.from_numpy(z))
        got = exp.decode(z)
        assert got.dtype == np.uint8 and got.shape == (batch, *IMAGE_SHAPE)
        assert np.abs(got.astype(int) - want.numpy().astype(int)).max() <= 1, f"decoder at batch {batch}"

        images = images_for(model, batch, seed=100 + batch)
        if exp.has_encoder:
            mu, logvar = exp.encode(images.numpy())
            with torch.no_grad():
                want_mu, want_logvar = EncoderGraph(model)(images)
            assert_close(mu, want_mu, f"encoder mu at batch {batch}")
            assert_close(logvar, want_logvar, f"encoder logvar at batch {batch}")
        else:
            with pytest.raises(ExportError, match="no encoder"):
                exp.encode(images.numpy())

        scores = exp.scores(images.numpy())
        assert list(scores) == names  # the anomaly map only when asked for
        with torch.no_grad():
            want_scores = ScoreGraph(model, names, maps=exp.has_encoder)(images)
        # ... and the very function the checkpoint's calibration used
        calibration_scores = score_images(model, images, torch.device("cpu"))
        for name, want_score in zip(names, want_scores):
            assert scores[name].shape == (batch,)
            assert_close(scores[name], want_score, f"score {name} at batch {batch}")
            assert_close(scores[name], calibration_scores[name], f"score {name} vs calibration at batch {batch}")
        if exp.has_encoder:
            with_map = exp.scores(images.numpy(), maps=True)
            assert list(with_map) == [*names, "anomaly_map"]
            for name in names:  # the same call gives the same scores
                np.testing.assert_array_equal(with_map[name], scores[name])
            got_map, want_map = with_map["anomaly_map"], want_scores[-1].numpy()
            assert got_map.dtype == want_map.dtype == np.float32 and got_map.shape == (batch, *IMAGE_SHAPE)
            assert grey_levels(got_map, want_map) <= 1, f"anomaly map at batch {batch}"


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_graphs_take_labels_and_match_torch(build, family):
    """decoder and encoder take int64 labels; the score graph takes -1 for an unknown label, scores that image under
    the class that explains it best and says which (``label``), exactly as the torch model does."""
    built = build(f"{family}-conditional")
    model = built.model
    exp = open_export(built.out, providers="cpu")
    assert exp.conditional and exp.class_names == list("0123456789")
    assert built.manifest["classes"] == {"conditional": True, "names": list("0123456789"), "condition_on": None}
    for graph in ("decoder", "encoder", "score"):
        assert {"name": "label", "dtype": "int64", "shape": ["batch"]} in built.manifest["graphs"][graph]["inputs"]
    names = exp.score_names
    assert "label" not in names
    for batch in BATCHES:
        labels = balanced_labels(batch, 10, seed=batch)
        z = sample_latents(batch, exp.latent_dim, seed=batch, prior=exp.prior, labels=labels)
        with torch.no_grad():
            want = DecoderGraph(model)(torch.from_numpy(z), torch.from_numpy(labels))
        got = exp.decode(z, labels)
        assert np.abs(got.astype(int) - want.numpy().astype(int)).max() <= 1, f"decoder at batch {batch}"
        images = torch.from_numpy(got)
        mu, _ = exp.encode(got, labels)
        with torch.no_grad():
            assert_close(mu, EncoderGraph(model)(images, torch.from_numpy(labels))[0], f"encoder mu at batch {batch}")
        partly = np.where(np.arange(batch) % 2 == 1, -1, labels)
        scores = exp.scores(got, partly)
        with torch.no_grad():
            want_scores = model.anomaly_scores(uint8_to_model(images), torch.from_numpy(partly))
        np.testing.assert_array_equal(scores["label"], want_scores["label"].numpy())
        assert (scores["label"][partly >= 0] == partly[partly >= 0]).all()
        for name in names:
            np.testing.assert_allclose(
                scores[name], want_scores[name].float().numpy(), rtol=1e-3, atol=1e-3, err_msg=name
            )
        np.testing.assert_array_equal(exp.scores(got)["label"], exp.scores(got, np.full(batch, -1))["label"])
    with pytest.raises(ExportError, match="conditional model: give a class label"):
        exp.decode(z)
    with pytest.raises(ExportError, match="not a conditional model"):
        open_export(build(family).out, providers="cpu").decode(z, labels)


@pytest.mark.parametrize("key", [*FAMILIES, *(f"{family}-conditional" for family in FAMILIES)])
def test_the_anomaly_map_is_the_image_against_its_reconstruction(build, key):
    """score.onnx's anomaly_map is |x - decode(encode_mean(x))| / 255 as encoder.onnx and decoder.onnx give it (a
    conditional model's under the class each image was scored under), within one grey level; and it comes from the
    reconstruction the scores use: the mean of its square is the same call's recon_error."""
    exp = open_export(build(key).out, providers="cpu")
    for batch in BATCHES:
        labels = balanced_labels(batch, 10, seed=batch) if exp.conditional else None
        images = exp.decode(sample_latents(batch, exp.latent_dim, seed=batch), labels)
        images[::2] = np.random.default_rng(batch).integers(0, 256, images[::2].shape, dtype=np.uint8)
        given = None if labels is None else np.where(np.arange(batch) % 2 == 1, -1, labels)  # every other inferred
        out = exp.scores(images, given, maps=True)
        used = out.get("label")
        mu, _ = exp.encode(images, used)
        expected = reference_map(images, exp.decode(mu, used))
        assert out["anomaly_map"].dtype == np.float32 and out["anomaly_map"].shape == images.shape
        assert grey_levels(out["anomaly_map"], expected) <= 1, f"{key} at batch {batch}"
        squared = (out["anomaly_map"].astype(np.float64) ** 2).reshape(batch, -1).mean(axis=1)
        np.testing.assert_allclose(squared, out["recon_error"], rtol=1e-6, err_msg=f"{key} at batch {batch}")


@pytest.mark.parametrize("key", [*FAMILIES, *(f"{family}-conditional" for family in FAMILIES)])
def test_the_score_graph_decodes_once(build, key):
    """The map shares the scores' reconstruction: score.onnx holds the decoder's transposed convolutions once, not
    again for the map (for a conditional model: not again at the class each image was scored under)."""

    def transposed_convolutions(graph: str) -> int:
        nodes = onnx.load(str(build(key).out / f"{graph}.onnx"), load_external_data=False).graph.node
        return sum(node.op_type == "ConvTranspose" for node in nodes)

    assert transposed_convolutions("score") == transposed_convolutions("decoder") > 0


def test_manifest_alone_is_enough_to_sample_from_the_decoder(exported):
    # only manifest.json, numpy and onnxruntime: no genlab reader, no torch
    manifest = json.loads((exported.out / "manifest.json").read_text())
    spec = manifest["graphs"]["decoder"]
    (z_spec,), (out_spec,) = spec["inputs"], spec["outputs"]
    latent = manifest["latent"]["dim"]
    assert z_spec["shape"] == ["batch", latent] and z_spec["dtype"] == "float32"
    session = ort.InferenceSession(str(exported.out / spec["file"]), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((6, latent)).astype(z_spec["dtype"])
    (images,) = session.run([out_spec["name"]], {z_spec["name"]: z})
    image = manifest["image"]
    assert images.dtype == np.dtype(out_spec["dtype"]) == np.dtype(image["pixel_format"])
    assert list(images.shape) == [6, *out_spec["shape"][1:]] == [6, image["channels"], image["height"], image["width"]]
    assert image["layout"] == "NCHW" and image["value_range"] == [0, 255]
    assert images.std() > 0  # not a constant image


ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def test_onnx_files_are_valid_self_contained_and_as_the_manifest_says(exported):
    graphs = exported.manifest["graphs"]
    assert sorted(os.listdir(exported.out)) == sorted(["manifest.json", *(g["file"] for g in graphs.values())])
    for name, spec in graphs.items():
        path = exported.out / spec["file"]
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        assert not any(
            onnx.external_data_helper.uses_external_data(t) for t in onnx.external_data_helper._get_all_tensors(model)
        ), f"{name} has external data"
        assert next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) == spec["opset"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for declared, actual in ((spec["inputs"], session.get_inputs()), (spec["outputs"], session.get_outputs())):
            assert [d["name"] for d in declared] == [a.name for a in actual], name
            for d, a in zip(declared, actual):
                assert ORT_TYPES[a.type] == d["dtype"], (name, d["name"])
                assert len(a.shape) == len(d["shape"]) and isinstance(a.shape[0], str), (
                    name,
                    d["name"],
                    a.shape,
                )  # dynamic batch
                assert list(a.shape[1:]) == d["shape"][1:], (name, d["name"])


def test_manifest_contents(exported):
    m, ckpt, family = exported.manifest, exported.ckpt, exported.family
    assert json.loads((exported.out / "manifest.json").read_text()) == json.loads(json.dumps(m))
    assert read_manifest(exported.out) == json.loads(json.dumps(m))
    assert m["format"] == "genlab-export" and m["format_version"] == FORMAT_VERSION == 2
    assert m["genlab_version"] == __version__ and m["family"] == family and m["name"] == f"genlab-{family}-mnist-5k"
    assert m["latent"]["dim"] == TINY["latent_dim"]
    if exported.model.has_encoder:  # the Gaussian mixture fitted to the training codes, as the checkpoint has it
        assert (
            m["latent"]["fitted_prior"] == json.loads(json.dumps(ckpt["prior"])) and "mixture" in m["latent"]["prior"]
        )
    else:
        assert m["latent"]["fitted_prior"] is None and "N(0, I)" in m["latent"]["prior"]
    assert m["image"] == {
        "channels": 1,
        "height": 28,
        "width": 28,
        "layout": "NCHW",
        "pixel_format": "uint8",
        "value_range": [0, 255],
    }

    names = list(MODELS[family].score_descriptions)
    images = {"name": "images", "dtype": "uint8", "shape": ["batch", *IMAGE_SHAPE]}
    graphs = {
        "decoder": ([{"name": "z", "dtype": "float32", "shape": ["batch", 4]}], [images]),
        "score": ([images], [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in names]),
    }
    if MODELS[family].has_encoder:
        graphs["encoder"] = (
            [images],
            [{"name": n, "dtype": "float32", "shape": ["batch", 4]} for n in ("mu", "logvar")],
        )
        graphs["score"][1].append({"name": "anomaly_map", "dtype": "float32", "shape": ["batch", *IMAGE_SHAPE]})
        assert m["scores"]["map_description"] == ANOMALY_MAP_MEANING
    assert set(m["graphs"]) == set(graphs)
    for name, (inputs, outputs) in graphs.items():
        assert m["graphs"][name]["file"] == f"{name}.onnx"
        assert m["graphs"][name]["inputs"] == inputs and m["graphs"][name]["outputs"] == outputs, name
    assert (
        m["scores"]["names"] == names and m["scores"]["primary"] == "score" and m["scores"]["larger_is_more_anomalous"]
    )
    assert m["scores"]["descriptions"] == MODELS[family].score_descriptions

    # copied from the checkpoint
    assert ckpt["complete"] and m["calibration"] == json.loads(json.dumps(ckpt["calibration"]))
    assert set(m["calibration"]["scores"]) == set(names)
    assert m["dataset"] == ckpt["data"] and m["dataset"]["dataset"] == "mnist-5k"
    assert m["dataset"]["dataset_hash"] is None  # a registered dataset is named by its name
    # the training configuration without the training machine's data folder
    assert m["training"]["train_config"] == {k: v for k, v in ckpt["train_config"].items() if k != "data_dir"}
    assert m["training"]["metrics"] == json.loads(json.dumps(ckpt["metrics"]))
    assert m["training"]["step"] == ckpt["step"] == exported.steps and m["training"]["complete"] is True
    assert m["training"]["warning"] is None
    assert m["training"]["model_config"] == ckpt["model_config"]
    assert m["source"] == {
        "checkpoint": "last.pt",
        "sha256": sha256(exported.checkpoint),
        "genlab_version": __version__,
    }

    # every file's hash
    assert set(m["files"]) == {g["file"] for g in m["graphs"].values()}
    for name, digest in m["files"].items():
        assert digest == sha256(exported.out / name), name

    # parity figures: every output of every graph, at batch 1 and a batch above 1, within tolerance
    assert set(m["parity"]) == set(graphs)
    for name, parity in m["parity"].items():
        assert 1 in parity["batch_sizes"] and max(parity["batch_sizes"]) > 1
        assert parity["provider"] == "CPUExecutionProvider"
        assert set(parity["outputs"]) == {o["name"] for o in graphs[name][1]}
        for out, figure in parity["outputs"].items():
            uint8 = out in ("images", "anomaly_map")  # the map is compared in grey levels (1/255)
            standardised = (name, out) == ("score", "score")  # the primary score, in standard units of normal images
            assert figure["tolerance"] == (1.0 if uint8 else 1e-3 if standardised else 1e-4)
            assert 0 <= figure["max_diff"] <= figure["tolerance"], (name, out, figure)


def test_the_manifest_publishes_a_folder_by_its_name_and_hash():
    folder = "folder:/home/alice/parts/images/"
    data = {"dataset": folder, "dataset_hash": "sha256:0123456789abcdef", "split": "train", "class_names": ["a"]}
    assert onnx_export.published_data(data) == {**data, "dataset": "folder:images"}
    tc = {"dataset": folder, "data_dir": "/home/alice/data", "epochs": 3}
    assert onnx_export.published_train_config(tc) == {"dataset": "folder:images", "epochs": 3}
    assert onnx_export.default_name("vae", folder) == "genlab-vae-images"


# -- the reading side's errors ------------------------------------------------------------------
@pytest.fixture
def copy_of(build, tmp_path):
    def make(family: str = "vae") -> Path:
        return Path(shutil.copytree(build(family).out, tmp_path / f"copy-{family}"))

    return make


def test_unknown_format_version_is_refused(copy_of):
    out = copy_of()
    manifest = json.loads((out / "manifest.json").read_text())
    for version in (99, 0, "2", None, 1):
        (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": version}))
        with pytest.raises(ExportError, match="format version .* is not supported by this genlab") as err:
            open_export(out)
        assert len(str(err.value).splitlines()) == 1
    # an export from before score.onnx gave anomaly maps: made again, not read
    assert str(err.value).endswith("(reads version 2); export it again with this genlab")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="unreadable manifest"):
        read_manifest(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ExportError, match="not a genlab export manifest"):
        read_manifest(out)


@pytest.mark.parametrize("graph", ["decoder", "score"])
def test_a_tampered_onnx_file_is_named(copy_of, graph):
    out = copy_of()
    path = out / f"{graph}.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=rf"{graph}\.onnx: sha256 does not match") as err:
        open_export(out)
    assert len(str(err.value).splitlines()) == 1
    from genlab.export.reader import read_export

    # skipping the hashes when the manifest is read does not skip them when the graphs are loaded
    with pytest.raises(ExportError, match=rf"{graph}\.onnx: sha256 does not match"):
        read_export(out, verify=False).start_sessions(providers="cpu")
    # and a file whose hash matches but that ONNX Runtime cannot load is named too
    import hashlib
    import json

    path.write_bytes(b"garbage")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][f"{graph}.onnx"] = hashlib.sha256(b"garbage").hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=rf"{graph}\.onnx: ONNX Runtime cannot load it"):
        read_export(out, verify=False).start_sessions(providers="cpu")


@pytest.mark.parametrize("missing", ["encoder.onnx", "score.onnx", "manifest.json"])
def test_a_missing_file_is_named(copy_of, missing):
    out = copy_of()
    (out / missing).unlink()
    with pytest.raises(ExportError, match=rf"{missing}.* missing") as err:
        open_export(out)
    assert len(str(err.value).splitlines()) == 1


def test_not_an_export(tmp_path):
    with pytest.raises(ExportError, match="no such export directory"):
        open_export(tmp_path / "nowhere" / "at-all")
    with pytest.raises(ExportError, match="manifest.json is missing"):
        open_export(tmp_path)


def test_providers_and_latents():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ExportError, match="unknown execution provider"):
        choose_providers("tpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ExportError, match="onnxruntime-gpu"):
            choose_providers("cuda")
    a, b = sample_latents(5, 3, seed=7), sample_latents(5, 3, seed=7, temperature=0.5)
    assert a.dtype == np.float32 and a.shape == (5, 3) and np.array_equal(a * np.float32(0.5), b)


def test_reader_imports_without_torch():
    code = "import export.reader, sys; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- the writing side's errors --------------------------------------------------------------------
def test_corrupt_and_truncated_checkpoints(build, tmp_path, capsys):
    data = build("vae").checkpoint.read_bytes()
    capsys.readouterr()  # training's progress lines, if this test built the checkpoint
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 100)
    for name in ("cut.pt", "garbage.pt"):
        out = tmp_path / f"out-{name}"
        with pytest.raises(
            GenlabError, match=rf"{name} is not a readable genlab checkpoint \(corrupt or truncated\?\)"
        ):
            export_checkpoint(tmp_path / name, out)
        assert main(["export", str(tmp_path / name), "--out", str(out), "--no-bento"]) == 2
        assert "genlab export: error:" in cli_line(capsys) and leftovers(out) == []
    assert main(["export", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o"), "--no-bento"]) == 2
    assert "checkpoint not found" in cli_line(capsys)


def test_an_unfinished_run_exports_with_a_warning(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "exp"
    tiny = [f"--set={k}={v}" for k, v in {**TINY, "quality_every": 0}.items()]
    args = ["--epochs", "2", "--normal-class", "1", "--batch-size", "16", "--max-steps", "3", *tiny]
    assert main(["train", "vae", "--out", str(run), *args]) == 0
    line = capsys.readouterr().out.strip()
    assert "max steps at epoch 0/2, step 3" in line and "samples" not in line and "reconstructions" not in line

    assert main(["export", str(run), "--out", str(out), "--no-bento"]) == 0
    sentence = (
        "the checkpoint was saved at step 3 of 50, before the run's calibration; "
        "/anomaly-score needs a raw threshold in each request"
    )
    assert cli_line(capsys) == (
        f"genlab export: warning: {run / 'last.pt'}: {sentence}; train it to the end "
        f"(genlab train vae --out {run} --resume)"
    )
    manifest = read_manifest(out)
    assert manifest["training"]["complete"] is False and manifest["training"]["warning"] == sentence
    assert manifest["calibration"] is None


def test_existing_out_needs_overwrite(tmp_path, capsys, fast_exporter):
    vae = fast_exporter("vae")
    capsys.readouterr()
    out = Path(shutil.copytree(vae.out, tmp_path / "exp"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportFailed, match="already exists; choose another --out or pass --overwrite"):
        export_checkpoint(vae.checkpoint, out)
    assert main(["export", str(vae.checkpoint), "--out", str(out), "--no-bento"]) == 2
    assert "--overwrite" in cli_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # with --overwrite an export is replaced, and nothing is left beside it
    manifest = export_checkpoint(vae.checkpoint, out, name="replaced", overwrite=True)
    assert manifest["name"] == "replaced" and read_manifest(out)["name"] == "replaced"
    assert leftovers(out) == ["exp"]


def test_overwrite_never_replaces_something_that_is_not_an_export(tmp_path, fast_exporter):
    vae = fast_exporter("vae")
    run = Path(
        shutil.copytree(vae.checkpoint.parent, tmp_path / "run")
    )  # a run directory: checkpoint, samples, metrics
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ExportFailed, match="not a genlab export"):
        export_checkpoint(run, run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == before and leftovers(run) == ["run"]
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ExportFailed, match="not a genlab export"):
        export_checkpoint(vae.checkpoint, tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    export_checkpoint(vae.checkpoint, tmp_path / "empty", overwrite=True)  # an empty directory is fine
    read_manifest(tmp_path / "empty")


def test_float_tolerances_grow_with_the_square_root_of_the_pixel_count():
    assert onnx_export.float_scale((1, 28, 28)) == 1.0 and onnx_export.float_scale((1, 8, 8)) == 1.0
    assert onnx_export.float_scale((3, 256, 256)) == pytest.approx((3 * 256 * 256 / 784) ** 0.5)
    expected = torch.tensor([1000.0])
    off = np.array([1000.0 * (1 + 3e-4)], np.float32)  # a 3x256x256 sum's float32 rounding (2.3e-4 measured)
    with pytest.raises(ExportFailed, match="allowed 0.0001"):
        onnx_export._compare("neg_elbo", expected, off)
    assert (
        onnx_export._compare("neg_elbo", expected, off, scale=onnx_export.float_scale((3, 256, 256)))["tolerance"]
        > 3e-4
    )


@pytest.mark.parametrize("tolerance", ["FLOAT_TOLERANCE", "UINT8_TOLERANCE"])
def test_failed_parity_publishes_nothing(tmp_path, capsys, monkeypatch, fast_exporter, tolerance):
    vae = fast_exporter("vae")
    capsys.readouterr()
    monkeypatch.setattr(onnx_export, tolerance, -1)
    out = tmp_path / "sub" / "exp"
    with pytest.raises(
        ExportFailed, match=r"parity check failed: \w+\.onnx output \w+ at batch \d+ differs from torch"
    ):
        export_checkpoint(vae.checkpoint, out)
    assert leftovers(out) == []
    assert main(["export", str(vae.checkpoint), "--out", str(out), "--no-bento"]) == 2
    assert "parity check failed" in cli_line(capsys) and leftovers(out) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_catches_graphs_that_differ_from_the_checkpoint(tmp_path, fast_exporter, family):
    """The checkpoint's weights perturbed after export: the parity check must notice."""
    built = fast_exporter(family)
    ckpt = torch.load(built.checkpoint, weights_only=True)
    g = torch.Generator().manual_seed(0)
    ckpt["model"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in ckpt["model"].items()
    }
    ckpt = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "genlab_version")}
    save_checkpoint(ckpt, tmp_path / "perturbed.pt")
    out = tmp_path / "exp"
    with pytest.raises(ExportFailed, match="parity check failed"):
        export_checkpoint(tmp_path / "perturbed.pt", out)
    assert leftovers(out) == []


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch, fast_exporter):
    vae = fast_exporter("vae")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "check_parity", interrupted)
    out = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(vae.checkpoint, out)
    assert leftovers(out) == []


# -- the command line and BentoML's model store (a subprocess with its own BENTOML_HOME) ---------
def test_cli_export_to_the_bentoml_store_and_open_it_by_name(build, tmp_path):
    gan = build("gan")
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)

    listed = run("-m", "genlab", "models")
    assert listed.returncode == 0 and "no genlab models" in listed.stdout, listed.stderr

    bad = run("-m", "genlab", "export", str(gan.checkpoint), "--out", str(tmp_path / "bad"), "--bento", "Not A Name")
    assert (
        bad.returncode == 2
        and "not a valid BentoML model name" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    assert leftovers(tmp_path / "bad") == []  # refused before anything was written

    done = run(
        "-m", "genlab", "export", str(gan.checkpoint), "--out", str(tmp_path / "exp"), "--bento", "tiny-gan", "--json"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (
        result["family"] == "gan"
        and result["graphs"] == ["decoder", "encoder", "score"]
        and result["name"] == "tiny-gan"
    )
    assert result["bento_tag"].startswith("tiny-gan:")
    assert all(0 <= d <= 1 for d in result["parity_max_diff"].values())
    read_manifest(tmp_path / "exp")

    listed = run("-m", "genlab", "models", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["tag"] == result["bento_tag"] and row["family"] == "gan" and row["dataset"] == "mnist-5k"
    assert row["latent_dim"] == 4 and row["image"]["pixel_format"] == "uint8"
    assert Path(row["path"]).is_relative_to(tmp_path / "bentoml")

    code = (
        "import json, sys; from export.reader import open_export, sample_latents\n"
        "m = open_export('tiny-gan', providers='cpu')\n"
        "images = m.decode(sample_latents(3, m.latent_dim, 0))\n"
        "print(json.dumps({'path': str(m.path), 'family': m.family, 'providers': m.providers, 'shape': images.shape,\n"
        "                  'dtype': str(images.dtype), 'score': m.scores(images)['score'].tolist(),\n"
        "                  'torch': 'torch' in sys.modules}))"
    )
    opened = run("-c", code)
    assert opened.returncode == 0, opened.stderr[-2000:]
    info = json.loads(opened.stdout)
    assert info["family"] == "gan" and info["providers"] == {
        g: "CPUExecutionProvider" for g in ("decoder", "encoder", "score")
    }
    assert info["shape"] == [3, 1, 28, 28] and info["dtype"] == "uint8" and len(info["score"]) == 3
    assert Path(info["path"]).is_relative_to(tmp_path / "bentoml") and not info["torch"]

    missing = run("-c", "from export.reader import open_export; open_export('no-such-model')")
    assert missing.returncode == 1 and "neither an export directory nor a model in the BentoML store" in missing.stderr
