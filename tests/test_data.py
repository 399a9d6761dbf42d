"""Dataset readers on real (mnist-5k) and fake standard files, splits and augmentation."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import torch

from genlab.data import dataset_hash, load_split, published_name
from genlab.errors import GenlabError
from genlab.pixels import model_to_uint8, random_translate, uint8_to_model


def test_mnist5k_splits_are_fixed_disjoint_and_stratified():
    splits = {s: load_split("mnist-5k", s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [4000, 500, 500]
    assert splits["train"].images.shape[1:] == (1, 28, 28)
    for d in splits.values():
        assert torch.bincount(d.labels).tolist() == [len(d) // 10] * 10
    rows = {s: {bytes(img.numpy().tobytes()) for img in d.images} for s, d in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not rows[a] & rows[b], f"{a} and {b} share images"
    assert torch.equal(load_split("mnist-5k", "val").images, splits["val"].images)
    heldout = load_split("mnist-5k", "heldout")  # what training never sees: val then test
    assert torch.equal(heldout.images, torch.cat([splits["val"].images, splits["test"].images]))
    assert torch.equal(heldout.labels, torch.cat([splits["val"].labels, splits["test"].labels]))


def test_normal_class_filter():
    data = load_split("mnist-5k", "train").only_class(3)
    assert len(data) == 400 and (data.labels == 3).all()
    with pytest.raises(GenlabError, match="normal class 11"):
        load_split("mnist-5k", "train").only_class(11)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_readers(name, fake_mnist_dir):
    train = load_split(name, "train", str(fake_mnist_dir))
    val = load_split(name, "val", str(fake_mnist_dir))
    test = load_split(name, "test", str(fake_mnist_dir))
    assert (len(train), len(val), len(test)) == (180, 20, 50)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)


def test_cifar_reader(fake_cifar_dir):
    train = load_split("cifar10", "train", str(fake_cifar_dir))
    test = load_split("cifar10", "test", str(fake_cifar_dir))
    assert (
        train.images.shape[1:] == (3, 32, 32)
        and len(train) + len(load_split("cifar10", "val", str(fake_cifar_dir))) == 100
    )
    assert len(test) == 30


def test_cifar_converted_to_grey_and_resized(fake_cifar_dir):
    data = load_split("cifar10", "test", str(fake_cifar_dir), image_size=16, channels=1)
    assert data.images.shape == (30, 1, 16, 16)


@pytest.mark.parametrize(
    "name,folder",
    [
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("celeba", "celeba"),
    ],
)
def test_missing_files_name_what_to_put_where(name, folder, tmp_path):
    with pytest.raises(GenlabError) as info:
        load_split(name, "train", str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / folder) in message and "--download" in message and "\n" not in message


def test_class_names_travel_with_the_data(fake_mnist_dir, fake_cifar_dir, image_folder):
    assert load_split("mnist-5k", "val").class_names == tuple("0123456789")
    assert load_split("mnist", "test", str(fake_mnist_dir)).class_names == tuple("0123456789")
    assert load_split("fashion-mnist", "test", str(fake_mnist_dir)).class_names[0] == "T-shirt/top"
    assert load_split("cifar10", "test", str(fake_cifar_dir)).class_names == tuple(f"c{i}" for i in range(10))
    assert load_split(f"folder:{image_folder}", "train", image_size=8).class_names == ("cats", "dogs")
    assert load_split("mnist-5k", "heldout").only_class(3).class_names == tuple("0123456789")


def test_celeba_is_read_directly_and_labelled_by_one_attribute(fake_celeba_dir):
    """--condition-on turns one binary attribute into a two-class label; the files need no md5 (torchvision's
    reader insists on the md5 of every metadata file, so it cannot read a CelebA copy with one file edited)."""
    train = load_split("celeba", "train", str(fake_celeba_dir), image_size=16)
    assert train.images.shape == (8, 3, 16, 16) and train.class_names == ("all",) and not train.labels.any()
    male = {
        s: load_split("celeba", s, str(fake_celeba_dir), image_size=16, condition_on="Male")
        for s in ("train", "val", "test")
    }
    assert male["train"].class_names == ("not Male", "Male")
    assert male["train"].labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1] and male["test"].labels.tolist() == [0, 1]
    assert torch.equal(male["train"].images, train.images)
    with pytest.raises(GenlabError, match="unknown attribute 'Bald'.*Male, Smiling"):
        load_split("celeba", "train", str(fake_celeba_dir), condition_on="Bald")
    with pytest.raises(GenlabError, match="CelebA attribute"):
        load_split("mnist-5k", "train", condition_on="Male")


def test_image_folder(image_folder):
    splits = {s: load_split(f"folder:{image_folder}", s, image_size=24, channels=3) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 25  # 24 images + 1 RGBA; the .txt is ignored
    assert all(d.images.shape[1:] == (3, 24, 24) for d in splits.values())
    all_labels = torch.cat([d.labels for d in splits.values()])
    assert set(all_labels.tolist()) == {0, 1}  # cats, dogs
    grey = load_split(f"folder:{image_folder}", "train", image_size=8, channels=1)
    assert grey.images.shape[1:] == (1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(GenlabError, match="not a directory"):
        load_split(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenlabError, match="no .png"):
        load_split(f"folder:{tmp_path / 'empty'}", "train")
    (tmp_path / "bad").mkdir()
    for i in range(30):
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(GenlabError, match="cannot read image"):
        load_split(f"folder:{tmp_path / 'bad'}", "train")


def test_published_names_hold_no_path(tmp_path, monkeypatch):
    assert published_name("folder:/home/alice/parts/images") == "folder:images"
    assert published_name("folder:/home/alice/parts/images/") == "folder:images"
    monkeypatch.chdir(tmp_path)
    assert published_name("folder:.") == f"folder:{tmp_path.name}"  # the folder's own name, even when given as "."
    assert published_name("folder:images") == "folder:images"
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    assert published_name("folder:~/parts") == "folder:parts"
    for name in ("mnist-5k", "mnist", "cifar10", "celeba"):
        assert published_name(name) == name


def test_an_image_folder_hash_follows_its_files_not_where_they_are(image_folder, tmp_path):
    name = f"folder:{image_folder}"
    original = dataset_hash(name)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", original) and dataset_hash(name) == original
    assert dataset_hash("mnist-5k") is None  # a registered dataset is named by its name
    copy = shutil.copytree(image_folder, tmp_path / "elsewhere" / "copy")
    assert dataset_hash(f"folder:{copy}") == original  # moved or copied: the same content
    os.utime(copy / "cats" / "1.png", (0, 0))
    (copy / "notes.txt").write_text("edited, and not an image")
    assert dataset_hash(f"folder:{copy}") == original
    changed = []
    (copy / "cats" / "1.png").rename(copy / "dogs" / "1.png")  # moved to another class
    changed.append(dataset_hash(f"folder:{copy}"))
    (copy / "dogs" / "1.png").rename(copy / "dogs" / "99.png")  # renamed
    changed.append(dataset_hash(f"folder:{copy}"))
    with open(copy / "dogs" / "99.png", "ab") as f:  # its bytes edited
        f.write(b"\0")
    changed.append(dataset_hash(f"folder:{copy}"))
    (copy / "dogs" / "99.png").unlink()  # removed
    changed.append(dataset_hash(f"folder:{copy}"))
    assert len({original, *changed}) == 5
    with pytest.raises(GenlabError, match="not a directory"):
        dataset_hash(f"folder:{tmp_path / 'nope'}")


def test_unknown_dataset_and_split():
    with pytest.raises(GenlabError, match="unknown dataset"):
        load_split("imagenet", "train")
    with pytest.raises(GenlabError, match="unknown split"):
        load_split("mnist-5k", "dev")


def test_pixel_conversion_round_trips():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    m = uint8_to_model(x)
    assert m.min() == -1 and m.max() == 1
    assert torch.equal(model_to_uint8(m), x)


def test_translate_shifts_without_borders():
    white = torch.full((16, 1, 20, 20), 255, dtype=torch.uint8)
    assert torch.equal(random_translate(white, 0.1, torch.Generator().manual_seed(0)), white)  # no grey/black border
    ramp = torch.arange(20, dtype=torch.uint8).repeat(20, 1)[None, None].expand(16, 1, 20, 20).contiguous() * 10
    shifted = random_translate(ramp, 0.1, torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, ramp)
    offsets = (shifted[:, 0, 0, 10].int() - ramp[:, 0, 0, 10].int()) // 10
    assert offsets.abs().max() <= 2 and len(set(offsets.tolist())) > 1  # up to 10% of 20 px
    assert torch.equal(random_translate(ramp, 0.0), ramp)
    assert np.array_equal(shifted.numpy(), random_translate(ramp, 0.1, torch.Generator().manual_seed(0)).numpy())
