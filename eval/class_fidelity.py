"""Class fidelity of a conditional model: how often its samples are of the class they were asked for.

A sample drawn for label k counts as faithful when the reference classifier (:mod:`genlab.classifier`,
the LeNet genlab trains on the model's dataset labels; CelebA: on the attribute the model is
conditioned on) assigns it to class k. The share is only as good as the classifier, so its own
accuracy on the test split (overall and per class) goes next to it: a share near that accuracy is
as high as this classifier can tell. Labels are balanced and seeded
(:meth:`eval.model_source.ModelSource.sample_labelled`), so a checkpoint and its ONNX export give
the same share for the same seed.

Python API (what the benchmarks call): :func:`measure`. ``genlab eval fid`` adds the same numbers
for its own samples through :func:`images_to_class_fidelity`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from genlab.errors import GenlabError

CLASSIFIER_SEED = 0  # the classifier the training loop's sample quality uses (genlab.quality.classifier_for)
BATCH = 500


def require_conditional(source: Any, what: str) -> None:
    """One line for the user when ``what`` needs class labels and the model takes none."""
    if not source.conditional:
        raise GenlabError(
            f"{what} needs a conditional model (genlab train ... --conditional); "
            f"{source.path} is an unconditional {source.family}"
        )


def classifier_for_source(source: Any, data_dir: str = "data") -> tuple[Any, dict[str, Any]]:
    """(network, payload + ``file`` and ``identity``) of the reference classifier for the model's data and labels
    (trained on first use, cached); refused when its classes are not the model's."""
    from genlab.cache import file_digest
    from genlab.classifier import NoLabels, classifier_path, load_classifier

    channels, size, _ = source.image_shape
    try:
        path = classifier_path(source.dataset, size, channels, data_dir, CLASSIFIER_SEED, source.condition_on)
    except NoLabels as err:
        raise GenlabError(f"class fidelity: {err}") from None
    net, info = load_classifier(path)
    if int(info["classes"]) != source.num_classes:
        raise GenlabError(
            f"class fidelity: the reference classifier of {source.dataset} tells {info['classes']} classes "
            f"apart, the model {source.num_classes}"
        )
    return net, {**info, "file": str(path), "identity": f"lenet-{file_digest(path)}"}


def predict_classes(net: Any, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """uint8 [N, C, H, W] -> the classifier's class per image, int64 [N] (argmax of its logits)."""
    import torch

    from genlab.pixels import uint8_to_model

    with torch.no_grad():
        parts = [
            net(uint8_to_model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))).argmax(1)
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).numpy().astype(np.int64) if parts else np.zeros(0, np.int64)


def agreement_by_class(
    predicted: np.ndarray, wanted: np.ndarray, class_names: list[str]
) -> tuple[float, dict[str, float | None]]:
    """(share of ``predicted == wanted``, the same share within each wanted class; None for a class never wanted)."""
    predicted, wanted = np.asarray(predicted), np.asarray(wanted)
    hit = predicted == wanted
    per_class = {
        name: (float(hit[wanted == k].mean()) if (wanted == k).any() else None) for k, name in enumerate(class_names)
    }
    return float(hit.mean()) if len(hit) else float("nan"), per_class


def classifier_test_accuracy(net: Any, source: Any, data_dir: str = "data") -> dict[str, Any]:
    """The ceiling: the classifier's accuracy on the model's test split (overall and per class)."""
    from genlab.data import load_split

    channels, size, _ = source.image_shape
    test = load_split(
        source.dataset, "test", data_dir, image_size=size, channels=channels, condition_on=source.condition_on
    )
    overall, per_class = agreement_by_class(
        predict_classes(net, test.images.numpy()), test.labels.numpy(), source.class_names
    )
    return {
        "classifier_test_accuracy": overall,
        "classifier_test_accuracy_per_class": per_class,
        "classifier_test_split": f"{source.dataset}:test",
        "classifier_n_test": len(test),
    }


def images_to_class_fidelity(
    images: np.ndarray, labels: np.ndarray, source: Any, data_dir: str = "data"
) -> dict[str, Any]:
    """A conditional model's samples and the labels they were drawn for -> class fidelity (overall, per class) with
    the classifier's test accuracy beside it and the classifier named."""
    require_conditional(source, "class fidelity")
    net, info = classifier_for_source(source, data_dir)
    overall, per_class = agreement_by_class(predict_classes(net, images), labels, source.class_names)
    return {
        "class_fidelity": overall,
        "class_fidelity_per_class": per_class,
        **classifier_test_accuracy(net, source, data_dir),
        "n_per_class": {name: int((np.asarray(labels) == k).sum()) for k, name in enumerate(source.class_names)},
        "classifier": {
            "identity": info["identity"],
            "file": info["file"],
            "dataset": info["dataset"],
            "condition_on": source.condition_on,
            "seed": info["seed"],
            "val_accuracy": info.get("val_accuracy"),
        },
    }


def measure(
    model: Any, n: int = 1000, seed: int = 0, data_dir: str = "data", batch_size: int = 256, device: str = "auto"
) -> dict[str, Any]:
    """Class fidelity of ``n`` samples for balanced, seeded labels of a conditional model (checkpoint, run dir, export
    dir, BentoML tag or ModelSource). Keys: class_fidelity, class_fidelity_per_class, classifier_test_accuracy,
    classifier_test_accuracy_per_class, n, n_per_class, seed, classifier, ... (see the module docstring)."""
    from genlab.eval.model_source import ensure_source

    if int(n) < 1:
        raise GenlabError(f"class fidelity needs at least one sample, got n={n}")
    source = ensure_source(model, device)
    require_conditional(source, "class fidelity")
    started = time.perf_counter()
    images, labels = source.sample_labelled(int(n), int(seed), batch_size=batch_size)
    measured = images_to_class_fidelity(images, labels, source, data_dir)
    return {
        "evaluation": "class_fidelity",
        **measured,
        "n": len(images),
        "seed": int(seed),
        "class_names": list(source.class_names),
        "model": source.path,
        "kind": source.kind,
        "family": source.family,
        "dataset": source.dataset,
        "model_info": dict(source.info),
        "seconds": round(time.perf_counter() - started, 3),
    }


def result_name(result: dict[str, Any]) -> str:
    """The file name a result is saved under in RUN_DIR/eval/."""
    return f"class_fidelity-n{result['n']}-seed{result['seed']}"


def _shares(per_class: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {'-' if share is None else f'{share:.2f}'}" for name, share in per_class.items())


def fidelity_text(result: dict[str, Any]) -> str:
    """'class fidelity 0.93 (per class 0 0.95, ...; classifier test accuracy 0.98)': the share and its ceiling."""
    return (
        f"class fidelity {result['class_fidelity']:.3f} (per class {_shares(result['class_fidelity_per_class'])}; "
        f"classifier test accuracy {result['classifier_test_accuracy']:.3f} on {result['classifier_test_split']})"
    )


def summary_line(result: dict[str, Any]) -> str:
    """One line: the shares, the ceiling and what they were measured on."""
    return (
        f"{fidelity_text(result)}  [samples n={result['n']} seed={result['seed']}, balanced labels; "
        f"classifier {result['classifier']['identity']}; {result['kind']} {result['family']}]"
    )
