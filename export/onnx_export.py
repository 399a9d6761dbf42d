"""Checkpoint -> a self-contained export directory: ONNX graphs, parity figures, manifest.

Every graph takes or emits uint8 NCHW pixels; normalisation to the model's [-1, 1] range is
inside the graph (the same :mod:`genlab.pixels` functions the training loop uses), so nothing
downstream needs torch or any flag:

    decoder.onnx   z float32 [B, latent]      -> images uint8 [B, C, H, W]
    encoder.onnx   images uint8 [B, C, H, W]  -> mu, logvar float32 [B, latent]    (families with an encoder)
    score.onnx     images uint8 [B, C, H, W]  -> one float32 [B] per score component (every family),
                                                 anomaly_map float32 [B, C, H, W]  (families with an encoder)

A conditional model's graphs also take ``label`` int64 [B] (a class index, listed in the manifest's
``classes``): the decoder and encoder need it; the score graph takes -1 for "unknown" and then
scores the image under the class that explains it best, and outputs ``scored_label``, the class used.

``anomaly_map`` is :data:`genlab.measures.ANOMALY_MAP_MEANING`, or for a model with a local map (``anomaly_map``
"local", the inspection datasets' default) [B, 1, H, W], :data:`genlab.models.local_map.LOCAL_MAP_MEANING`. It is
computed from the reconstruction the scores compare the image with (a conditional model's: under the class it was
scored under), so one call gives scores and maps.

Each graph is compared with torch on seeded inputs at two batch sizes before anything is
published, and the directory appears only complete (written beside the target, then renamed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genlab.export.reader import (
    ANOMALY_MAP,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SCORED_LABEL,
    ExportedModel,
    sample_latents,
)
from torch import nn

from genlab import __version__
from genlab.checkpoint import class_info, load_checkpoint, model_from_checkpoint
from genlab.data import published_name
from genlab.errors import GenlabError
from genlab.files import file_sha256, publish_directory
from genlab.latents import balanced_labels
from genlab.latents import describe as describe_prior
from genlab.measures import ANOMALY_MAP_MEANING
from genlab.models import GenerativeModel
from genlab.models.local_map import LOCAL_MAP_MEANING
from genlab.pixels import model_to_uint8, uint8_to_model
from genlab.run_dir import checkpoint_file

PARITY_BATCHES = (1, 5)
FLOAT_TOLERANCE = 1e-4  # absolute; relative to the value above 1 (scores in nats can be in the hundreds)
UINT8_TOLERANCE = 1  # grey levels (the anomaly map too: it is compared in grey levels, 1/255 each)
# the primary score is in standard units of normal images: where a reconstructed pixel rounds to the other uint8
# level in ONNX Runtime than in torch (the same tolerance as the decoder's), a component moves by ~1e-8 and,
# divided by its small spread over normal images, the score by up to ~1e-4
STANDARDISED_TOLERANCE = 1e-3
# the float tolerances hold for 28x28x1 images; a score summed over more pixels carries more float32 rounding (about
# the square root of the number of terms: a 3x256x256 image's neg_elbo from ONNX Runtime is 2.3e-4 off float64 and
# torch's 1e-7), so they grow with the square root of the pixel count
TOLERANCE_PIXELS = 28 * 28
PARITY_SEED = 1234


class ExportFailed(GenlabError):
    """The export could not be written or did not match torch; nothing was published."""


class DecoderGraph(nn.Module):
    def __init__(self, model: GenerativeModel):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return model_to_uint8(self.model.decode(z, label))


class EncoderGraph(nn.Module):
    def __init__(self, model: GenerativeModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(uint8_to_model(images), label)


class ScoreGraph(nn.Module):
    """Images (and a conditional model's labels, -1 for unknown) -> the score components ``names``, a conditional
    model's scored class and, with ``maps``, each image's anomaly map."""

    def __init__(self, model: GenerativeModel, names: list[str], maps: bool):
        super().__init__()
        self.model = model
        self.names = names
        self.maps = maps

    def forward(self, images: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = uint8_to_model(images)
        scores = self.model.labelled_scores(x, label) if self.model.conditional else self.model.anomaly_scores(x)
        outputs = tuple(scores[name].to(torch.float32) for name in self.names)
        if self.model.conditional:
            outputs += (scores["label"],)
        if self.maps:
            outputs += (anomaly_map(self.model, images, self._reconstruction(x, scores.get("label"))),)
        return outputs

    def _reconstruction(self, x: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """[B, C, H, W] in [-1, 1]: ``model.reconstruct``, the decoded encoder mean that every family's
        ``score_parts`` compares the image with. A conditional model's is taken, as its scores are, from every image
        reconstructed under every class in ``labelled_scores``' class-major order, at the class each image was scored
        under. Being the same computation on the same inputs, the exporter merges it with the scores' into one pass."""
        if label is None:
            return self.model.reconstruct(x)
        b, k = x.shape[0], self.model.num_classes
        every = self.model.reconstruct(torch.cat([x] * k), torch.arange(k * b, device=x.device) // b)
        return every[label * b + torch.arange(b, device=x.device)]


def anomaly_map(model: GenerativeModel, images: torch.Tensor, recons: torch.Tensor) -> torch.Tensor:
    """uint8 images and their reconstructions in [-1, 1] [B, C, H, W] -> the model's anomaly map, float32: with a
    local map (``cfg.anomaly_map`` "local") its display [B, 1, H, W], LOCAL_MAP_MEANING; otherwise [B, C, H, W],
    ANOMALY_MAP_MEANING: zero where the uint8 reconstruction is perfect, ``recon_error`` the mean of its square."""
    if model.score_fit.local is not None:
        return model.score_fit.local.display(uint8_to_model(images), recons)
    return (images.to(torch.float32) - model_to_uint8(recons).to(torch.float32)).abs() / 255.0


def map_meaning(model: GenerativeModel) -> str:
    """What :func:`anomaly_map` holds for ``model``."""
    return LOCAL_MAP_MEANING if model.score_fit.local is not None else ANOMALY_MAP_MEANING


def map_shape(model: GenerativeModel, image_shape: tuple[int, int, int]) -> list[int]:
    """[C, H, W] of :func:`anomaly_map` for ``model``: one channel for a local map, the image's otherwise."""
    return [1, *image_shape[1:]] if model.score_fit.local is not None else list(image_shape)


def _score_names(model: GenerativeModel, image_shape: tuple[int, int, int]) -> list[str]:
    with torch.no_grad():
        return [name for name in model.anomaly_scores(torch.zeros(2, *image_shape)) if name != "label"]


def _io(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def _has_map(spec: dict[str, Any]) -> bool:
    """Whether a graph's outputs include the anomaly map."""
    return any(o["name"] == ANOMALY_MAP for o in spec["outputs"])


def graph_specs(
    model: GenerativeModel, image_shape: tuple[int, int, int], score_names: list[str]
) -> dict[str, dict[str, Any]]:
    """name -> (module, example input, I/O description) for every graph this family exports."""
    latent = model.cfg.latent_dim
    image_io = _io("images", "uint8", ["batch", *image_shape])
    label = [_io("label", "int64", ["batch"])] if model.conditional else []  # a conditional model's class index
    specs = {
        "decoder": {
            "module": DecoderGraph(model),
            "inputs": [_io("z", "float32", ["batch", latent]), *label],
            "outputs": [image_io],
        },
        "score": {
            "module": ScoreGraph(model, score_names, maps=model.has_encoder),
            "map_description": map_meaning(model),
            "inputs": [image_io, *label],
            # the class each image was scored under (the input's name cannot be reused)
            "outputs": [_io(name, "float32", ["batch"]) for name in score_names]
            + [_io(SCORED_LABEL, "int64", ["batch"])] * bool(label)
            + [_io(ANOMALY_MAP, "float32", ["batch", *map_shape(model, image_shape)])] * model.has_encoder,
        },
    }
    if model.has_encoder:
        specs["encoder"] = {
            "module": EncoderGraph(model),
            "inputs": [image_io, *label],
            "outputs": [_io("mu", "float32", ["batch", latent]), _io("logvar", "float32", ["batch", latent])],
        }
    return specs


def _example_input(
    graph: str, batch: int, latent: int, image_shape: tuple[int, int, int], decoder: DecoderGraph, seed: int
) -> tuple[torch.Tensor, ...]:
    """Seeded inputs: prior latents for the decoder; half decoded samples, half noise images otherwise. A conditional
    model's get balanced labels too, with every other one unknown (-1) for the score graph."""
    z = torch.from_numpy(sample_latents(batch, latent, seed))
    classes = decoder.model.num_classes
    label = (torch.from_numpy(balanced_labels(batch, classes, seed)),) if classes else ()
    if graph == "decoder":
        return (z, *label)
    with torch.no_grad():
        images = decoder(z, *label)
    noise = torch.randint(
        0, 256, (batch, *image_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    images[batch // 2 :] = noise[batch // 2 :]
    if graph == "score" and classes:
        label = (torch.where(torch.arange(batch) % 2 == 1, -1, label[0]),)
    return (images, *label)


def _export_graph(
    module: nn.Module, example: tuple[torch.Tensor, ...], spec: dict[str, Any], path: Path, opset: int | None
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=[i["name"] for i in spec["inputs"]],
                output_names=[o["name"] for o in spec["outputs"]],
                dynamic_shapes=tuple({0: batch} for _ in example),
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
                report=False,
            )
        except Exception as err:  # the exporter raises many types; report one line
            raise ExportFailed(f"torch.onnx.export failed for {path.name}: {str(err).splitlines()[0]}") from None


def float_scale(image_shape: tuple[int, int, int]) -> float:
    """How much the float tolerances grow for images of ``image_shape``: sqrt(pixels / TOLERANCE_PIXELS), at least 1."""
    return max(1.0, float(np.sqrt(np.prod(image_shape) / TOLERANCE_PIXELS)))


def _compare(
    name: str,
    torch_out: torch.Tensor,
    ort_out: np.ndarray,
    standardised: bool = False,
    grey_levels: bool = False,
    scale: float = 1.0,
) -> dict[str, Any]:
    """The largest difference of an output from torch's, against its tolerance: uint8 outputs and float ones in
    ``grey_levels`` (multiples of 1/255, the anomaly map) in grey levels, other floats as FLOAT_TOLERANCE says, the
    ``standardised`` primary score as STANDARDISED_TOLERANCE says, both times ``scale`` (:func:`float_scale`)."""
    expected = torch_out.cpu().numpy()
    if ort_out.shape != expected.shape or ort_out.dtype != expected.dtype:
        raise ExportFailed(
            f"{name}: ONNX output is {ort_out.dtype}{list(ort_out.shape)}, "
            f"torch gives {expected.dtype}{list(expected.shape)}"
        )
    diff = np.abs(ort_out.astype(np.float64) - expected.astype(np.float64))
    if expected.dtype == np.uint8:
        worst, allowed = float(diff.max(initial=0.0)), float(UINT8_TOLERANCE)
    elif grey_levels:
        worst, allowed = float(np.rint(diff * 255.0).max(initial=0.0)), float(UINT8_TOLERANCE)
    else:
        # absolute below 1, relative above: float32 sums of hundreds of pixels carry ~1e-6 relative error
        scaled = diff / np.maximum(1.0, np.abs(expected.astype(np.float64)))
        allowed = (STANDARDISED_TOLERANCE if standardised else FLOAT_TOLERANCE) * scale
        worst = float(scaled.max(initial=0.0))
    if not np.isfinite(worst) or worst > allowed:
        raise ExportFailed(f"parity check failed: {name} differs from torch by {worst:.3g} (allowed {allowed:g})")
    return {"max_diff": worst, "max_abs_diff": float(diff.max(initial=0.0)), "tolerance": allowed}


def check_parity(
    model: GenerativeModel,
    directory: Path,
    manifest: dict[str, Any],
    specs: dict[str, dict[str, Any]],
    image_shape: tuple[int, int, int],
) -> dict[str, Any]:
    """torch vs ONNX Runtime (CPU) on seeded inputs at each of PARITY_BATCHES, for every output of every graph."""
    exported = ExportedModel(directory, manifest).start_sessions(providers="cpu")
    latent = model.cfg.latent_dim
    decoder = specs["decoder"]["module"]
    figures: dict[str, Any] = {}
    for graph, spec in specs.items():
        outputs: dict[str, Any] = {}
        for batch in PARITY_BATCHES:
            x = _example_input(graph, batch, latent, image_shape, decoder, PARITY_SEED + batch)
            with torch.no_grad():
                expected = spec["module"](*x)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = exported.graphs[graph].run(*(t.numpy() for t in x))
            for out_spec, value in zip(spec["outputs"], expected):
                figure = _compare(
                    f"{graph}.onnx output {out_spec['name']} at batch {batch}",
                    value,
                    got[out_spec["name"]],
                    standardised=graph == "score" and out_spec["name"] == "score",
                    grey_levels=out_spec["name"] == ANOMALY_MAP,
                    scale=float_scale(image_shape),
                )
                best = outputs.get(out_spec["name"])
                if best is None or figure["max_diff"] > best["max_diff"]:
                    outputs[out_spec["name"]] = figure
        figures[graph] = {
            "batch_sizes": list(PARITY_BATCHES),
            "seed": PARITY_SEED,
            "provider": "CPUExecutionProvider",
            "outputs": outputs,
        }
    return figures


def default_name(family: str, dataset: str) -> str:
    """genlab-<family>-<dataset>, the dataset by its published name (``folder:`` left out), reduced to what a BentoML
    tag allows: ``genlab-vae-mnist-5k``, ``genlab-vae-images``, ``genlab-vae-mvtec-bottle``."""
    slug = "".join(
        ch if ch.isascii() and ch.isalnum() else "-"
        for ch in published_name(dataset).split(":")[-1].strip("/").split("/")[-1].lower()
    )
    return f"genlab-{family}-{slug.strip('-') or 'data'}"[:63].rstrip("-")  # tags: ASCII only, 63 characters at most


def published_data(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``data`` as the manifest publishes it: the dataset by its published name
    (:func:`genlab.data.published_name`) beside its ``dataset_hash``, never the path the run read it from."""
    return {**data, "dataset": published_name(data["dataset"])}


def published_train_config(train_config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``train_config`` as the manifest publishes it: the dataset by its published name, and without
    ``data_dir``, the folder of the training machine the registered datasets were read from."""
    published = {k: v for k, v in train_config.items() if k != "data_dir"}
    return {**published, "dataset": published_name(train_config["dataset"])}


def build_manifest(
    ckpt: dict[str, Any],
    source: Path,
    name: str,
    specs: dict[str, dict[str, Any]],
    score_names: list[str],
    opset: int | None,
    descriptions: dict[str, str],
) -> dict[str, Any]:
    """The manifest of an export of ``ckpt`` (read from ``source``). It holds no path of the machine that trained or
    exported the model: the dataset goes by its published name and hash, the source checkpoint by its file name."""
    data = ckpt["data"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genlab_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "name": name,
        "family": ckpt["family"],
        "latent": {
            "dim": ckpt["model_config"]["latent_dim"],
            "prior": describe_prior(ckpt.get("prior")),
            "fitted_prior": ckpt.get("prior"),
            "dtype": "float32",
        },
        "classes": class_info(ckpt),
        "image": {
            "channels": data["channels"],
            "height": data["image_size"],
            "width": data["image_size"],
            "layout": "NCHW",
            "pixel_format": "uint8",
            "value_range": [0, 255],
        },
        "graphs": {
            graph: {"file": f"{graph}.onnx", "opset": opset, "inputs": spec["inputs"], "outputs": spec["outputs"]}
            for graph, spec in specs.items()
        },
        "scores": {
            "names": score_names,
            "primary": "score",
            "larger_is_more_anomalous": True,
            "descriptions": {n: descriptions.get(n, "") for n in score_names},
            # what score.onnx's anomaly_map output holds, where the model has one
            **({"map_description": specs["score"]["map_description"]} if _has_map(specs["score"]) else {}),
        },
        "calibration": ckpt.get("calibration"),
        "dataset": published_data(data),
        "training": {
            "epoch": ckpt.get("epoch"),
            "step": ckpt.get("step"),
            "complete": ckpt.get("complete", False),
            "warning": unfinished_warning(ckpt),
            "seed": ckpt.get("seed"),
            "world_size": ckpt.get("world_size", 1),
            "model_config": ckpt["model_config"],
            "train_config": published_train_config(ckpt["train_config"]),
            "metrics": ckpt.get("metrics", {}),
        },
        "source": {
            "checkpoint": source.name,
            "sha256": file_sha256(source),
            "genlab_version": ckpt.get("genlab_version"),
        },
    }


def unfinished_warning(ckpt: dict[str, Any]) -> str | None:
    """What an export of a checkpoint saved before its run finished lacks, in one sentence; None once it finished."""
    if ckpt.get("complete"):
        return None
    tc, data = ckpt["train_config"], ckpt["data"]
    of = ""
    if data.get("num_train"):
        per_epoch = data["num_train"] // ckpt.get("world_size", 1) // tc["batch_size"]
        of = f" of {tc['epochs'] * per_epoch}"
    return (
        f"the checkpoint was saved at step {ckpt.get('step')}{of}, before the run's calibration; "
        "/anomaly-score needs a raw threshold in each request"
    )


def _is_export(directory: Path) -> bool:
    try:
        return json.loads((directory / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` must not exist; with ``overwrite`` it may be an earlier export or an empty directory, nothing else
    (``--out RUN_DIR --overwrite`` must never delete a run directory and its checkpoint)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ExportFailed(f"{out} already exists; choose another --out or pass --overwrite")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not _is_export(out)):
        raise ExportFailed(
            f"{out} exists and is not a genlab export directory; --overwrite replaces only an earlier export, "
            "choose another --out"
        )


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Flush the finished temp directory to disk and rename it into place (:func:`genlab.files.publish_directory`);
    an old export is replaced only with ``overwrite``. Killed at any point, ``out`` is the old export, the new
    one, or absent, and a temp directory left behind has no manifest until it is complete."""
    _check_out(out, overwrite)  # again: something may have appeared at ``out`` while the export ran
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            publish_directory(tmp, out)
        except BaseException:
            os.replace(old, out)  # put the earlier export back rather than leave nothing at ``out``
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        publish_directory(tmp, out)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    opset: int | None = None,
    name: str | None = None,
    overwrite: bool = False,
    prefer_best: bool = True,
) -> dict[str, Any]:
    """Write the export directory ``out`` from a checkpoint file or a run directory (its best.pt where there is one,
    with ``prefer_best``, else last.pt); returns the manifest."""
    source = checkpoint_file(checkpoint, prefer_best)
    ckpt = load_checkpoint(source)
    model = model_from_checkpoint(ckpt).float()
    data = ckpt["data"]
    image_shape = (int(data["channels"]), int(data["image_size"]), int(data["image_size"]))
    score_names = _score_names(model, image_shape)
    specs = graph_specs(model, image_shape, score_names)
    name = name or default_name(ckpt["family"], data["dataset"])
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published directory is an ordinary one
    try:
        for graph, spec in specs.items():
            example = _example_input(
                graph, 2, model.cfg.latent_dim, image_shape, specs["decoder"]["module"], PARITY_SEED
            )
            _export_graph(spec["module"], example, spec, tmp / f"{graph}.onnx", opset)
            _check_onnx(tmp / f"{graph}.onnx")
        stray = sorted(p.name for p in tmp.iterdir() if not p.name.endswith(".onnx"))
        if stray:
            raise ExportFailed(f"the exporter wrote unexpected files {stray}; weights must be inside the .onnx files")
        manifest = build_manifest(
            ckpt,
            source,
            name,
            specs,
            score_names,
            opset or _opset_of(tmp / "decoder.onnx"),
            model.descriptions(),
        )
        manifest["files"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        manifest["parity"] = check_parity(model, tmp, manifest, specs, image_shape)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportFailed(f"{path.name} fails onnx.checker: {str(err).splitlines()[0]}") from None


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
