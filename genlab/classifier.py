"""The small reference classifier: a LeNet-style convnet genlab trains on a dataset's own labels.

Two stages use it: evaluation (``genlab eval fid --extractor lenet``, registered with
torch-fidelity by :mod:`genlab.eval.extractors`) and the training loop's per-epoch sample quality
(:mod:`genlab.quality`). It is trained once per (dataset, size, channels, seed) for a few
epochs and cached under the project cache folder, written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from genlab.cache import cache_dir, cache_name
from genlab.errors import GenlabError

VERSION = 2
FEATURES = 128
# at least EPOCHS passes and MIN_STEPS updates: a small dataset such as mnist-5k (32 steps an epoch) needs the
# steps more than the passes before the classifier is confident on real digits
EPOCHS = 3
MIN_STEPS = 600
MAX_TRAIN = 20000
BATCH = 128
FEATURE_LAYERS = 9  # net[:FEATURE_LAYERS] gives the 128-d features (before the ReLU); the rest the logits


class NoLabels(GenlabError):
    """The dataset has fewer than two classes, so there is nothing to train a classifier on."""


def lenet(channels: int, classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, FEATURES),  # features: this layer's output (before the ReLU)
        nn.ReLU(),
        nn.Linear(FEATURES, classes),
    )


def classifier_path(
    dataset: str, size: int, channels: int, data_dir: str = "data", seed: int = 0, condition_on: str | None = None
) -> Path:
    """The cached classifier for (dataset, size, channels, seed; CelebA: the attribute it tells apart), trained on
    first use."""
    labels = {"condition_on": condition_on} if condition_on else {}
    name = cache_name(lenet=f"v{VERSION}", dataset=dataset, size=size, channels=channels, seed=seed, **labels)
    path = cache_dir("extractors") / f"{name}.pt"
    if not path.is_file():
        train_classifier(dataset, size, channels, data_dir, seed, path, condition_on)
    return path


def train_classifier(
    dataset: str, size: int, channels: int, data_dir: str, seed: int, path: Path, condition_on: str | None = None
) -> dict[str, Any]:
    """Adam on the train split (at most MAX_TRAIN images) for EPOCHS or MIN_STEPS, whichever is longer; written
    atomically."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from genlab.data import load_split
    from genlab.files import atomic_write_bytes
    from genlab.pixels import uint8_to_model

    train = load_split(dataset, "train", data_dir, image_size=size, channels=channels, condition_on=condition_on)
    classes = int(train.labels.max()) + 1
    if len(set(train.labels.tolist())) < 2:
        raise NoLabels(f"the reference classifier needs labels and {dataset} has a single class")
    g = torch.Generator().manual_seed(seed)
    if len(train) > MAX_TRAIN:
        train = train.select(torch.randperm(len(train), generator=g)[:MAX_TRAIN])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = lenet(channels, classes)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        per_epoch = (len(train) + BATCH - 1) // BATCH
        epochs = max(EPOCHS, -(-MIN_STEPS // per_epoch))
        with tqdm(total=epochs * per_epoch, desc=f"training the reference classifier on {dataset}", leave=False) as bar:
            for _ in range(epochs):
                order = torch.randperm(len(train), generator=g)
                for start in range(0, len(train), BATCH):
                    index = order[start : start + BATCH]
                    loss = F.cross_entropy(net(uint8_to_model(train.images[index])), train.labels[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    bar.update(1)
    net.eval()
    val = load_split(dataset, "val", data_dir, image_size=size, channels=channels, condition_on=condition_on)
    with torch.no_grad():
        accuracy = float((net(uint8_to_model(val.images)).argmax(1) == val.labels).float().mean())
    payload = {
        "format": "genlab-lenet",
        "version": VERSION,
        "dataset": dataset,
        "image_size": size,
        "channels": channels,
        "classes": classes,
        "seed": seed,
        "epochs": epochs,
        "val_accuracy": accuracy,
        "state_dict": net.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return payload


def load_classifier(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(network in eval mode, its payload without the weights) from a cached classifier file."""
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = lenet(int(payload["channels"]), int(payload["classes"]))
    net.load_state_dict(payload.pop("state_dict"))
    net.requires_grad_(False)
    return net.eval(), payload
