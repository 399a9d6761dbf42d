"""Anomaly-detection layouts: ``mvtec:PATH`` (one MVTec AD category as its download lays it out) and ``inspect:PATH``
(a user's normal/, abnormal/ and mask/ folders), on trees written here with the real file names and image sizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from genlab.cli.main import main
from genlab.export.onnx_export import default_name
from PIL import Image

from genlab.data import _held_out, dataset_hash, dataset_spec, load_split, native_shape, published_name
from genlab.errors import GenlabError
from tests.shared_models import TINY

BACKGROUND = 90  # the brightest background pixel; defects are white (255)


def _image(size: tuple[int, int], mode: str, seed: int, square: tuple[int, int, int] | None) -> Image.Image:
    """A dim, smooth image with a little noise (fast to encode at 1024 px), and a white square (x, y, side)."""
    w, h = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 60, w, dtype=np.float32)[None, :] + np.linspace(0, 20, h, dtype=np.float32)[:, None]
    array = (ramp + rng.integers(0, 10, (h, w))).astype(np.uint8)
    if mode == "RGB":
        array = np.stack([array, array // 2 + 10 * (seed % 3), array], axis=-1)
    if square is not None:
        x, y, side = square
        array[y : y + side, x : x + side] = 255
    return Image.fromarray(array, mode)


def _mask(size: tuple[int, int], square: tuple[int, int, int]) -> Image.Image:
    w, h = size
    array = np.zeros((h, w), np.uint8)
    x, y, side = square
    array[y : y + side, x : x + side] = 255
    return Image.fromarray(array, "L")


def write_mvtec(root: Path, side: int, mode: str, train: int = 10) -> Path:
    """One MVTec AD category: train/good/000.png..., test/{crack,good,hole}/000.png..., and
    ground_truth/{crack,hole}/000_mask.png... (a white square in each defective image, the same square in its mask)."""
    size = (side, side)
    squares = {"crack": (side // 8, side // 4, side // 4), "hole": (side // 2, side // 2, side // 3)}
    for i in range(train):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        _image(size, mode, i, None).save(root / "train" / "good" / f"{i:03d}.png", compress_level=1)
    for defect in ("good", "crack", "hole"):
        (root / "test" / defect).mkdir(parents=True)
        for i in range(2):
            square = squares.get(defect)
            _image(size, mode, 100 + i, square).save(root / "test" / defect / f"{i:03d}.png", compress_level=1)
            if square is not None:
                (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                _mask(size, square).save(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories, written once per module: metal_nut in colour at 700x700 and grid in grey at 1024x1024 (their
    sizes and modes in MVTec AD)."""
    root = tmp_path_factory.mktemp("mvtec_anomaly_detection")
    write_mvtec(root / "metal_nut", 700, "RGB")
    write_mvtec(root / "grid", 1024, "L", train=4)
    return root


@pytest.fixture
def metal_nut(categories: Path, tmp_path: Path) -> Path:
    """A copy of the colour category for one test to read or change."""
    return shutil.copytree(categories / "metal_nut", tmp_path / "mvtec_anomaly_detection" / "metal_nut")


@pytest.fixture
def grid(categories: Path, tmp_path: Path) -> Path:
    """A copy of the grey category."""
    return shutil.copytree(categories / "grid", tmp_path / "mvtec_anomaly_detection" / "grid")


def write_inspect(root: Path, typed: bool = True, masks: bool = True, mask_suffix: str = "_mask") -> Path:
    """A user's inspection folder of 800x600 colour photos: normal/ (9 images), abnormal/<type>/ (or abnormal/)
    and mask/<type>/ (or mask/) with one mask per abnormal image."""
    size = (800, 600)
    (root / "normal").mkdir(parents=True)
    for i in range(9):
        _image(size, "RGB", i, None).save(root / "normal" / f"part{i}.png", compress_level=1)
    # one square inside the centre crop, one partly outside it (x < 100 is cropped away)
    for t, square in (("dent", (300, 250, 200)), ("scratch", (40, 100, 160))):
        folder = root / "abnormal" / t if typed else root / "abnormal"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{t}-1"
        _image(size, "RGB", 50, square).save(folder / f"{name}.png", compress_level=1)
        if masks:
            mask_folder = root / "mask" / t if typed else root / "mask"
            mask_folder.mkdir(parents=True, exist_ok=True)
            _mask(size, square).save(mask_folder / f"{name}{mask_suffix}.png")
    return root


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_the_mvtec_layout_is_read_as_splits_with_labels_defect_types_and_masks(metal_nut):
    name = f"mvtec:{metal_nut}"
    assert native_shape(name) == (64, 3)
    train, val, test = (load_split(name, s, image_size=32) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (5, 5, 6)  # train/good's 10 images: 5 held out (half, under 40)
    assert train.images.shape == (5, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    for data in (train, val, test):
        assert data.class_names == ("good", "anomalous") and data.masks is not None
        assert data.masks.shape == (len(data), 32, 32) and data.masks.dtype == torch.bool
    assert train.defect_types == val.defect_types == ("good",) * 5
    assert not train.labels.any() and not val.labels.any() and not train.masks.any() and not val.masks.any()
    rows = {s: {d.images[i].numpy().tobytes() for i in range(len(d))} for s, d in (("train", train), ("val", val))}
    assert not rows["train"] & rows["val"]  # the held-out share is not trained on
    # test: all of test/ in the order of its paths
    assert test.defect_types == ("crack", "crack", "good", "good", "hole", "hole")
    assert test.labels.tolist() == [1, 1, 0, 0, 1, 1]
    defective = test.labels.bool()
    assert all(test.masks[i].any() for i in range(6) if defective[i]) and not test.masks[~defective].any()
    heldout = load_split(name, "heldout", image_size=32)
    assert heldout.defect_types == val.defect_types + test.defect_types
    assert torch.equal(heldout.masks, torch.cat([val.masks, test.masks]))
    # the one-class selection keeps each image's defect type and mask
    normal = test.only_class(0)
    assert normal.defect_types == ("good", "good") and normal.masks.shape == (2, 32, 32) and not normal.masks.any()


def test_a_grey_category_stays_grey(grid):
    name = f"mvtec:{grid}"
    assert native_shape(name) == (64, 1)
    test = load_split(name, "test", image_size=16)
    assert test.images.shape == (6, 1, 16, 16) and test.masks.shape == (6, 16, 16)
    assert load_split(name, "train", image_size=16, channels=3).images.shape[1] == 3  # a model may ask for colour


def _check_aligned(images: torch.Tensor, masks: torch.Tensor) -> None:
    """Each mask's foreground is where its image's white square is: nearly the same pixels, and the square's pixels
    are bright inside the mask and dim outside it."""
    for image, mask in zip(images, masks):
        grey = image.float().mean(0)
        bright = grey > (BACKGROUND + 255) / 2
        if not mask.any():
            assert not bright.any()
            continue
        iou = (bright & mask).sum() / (bright | mask).sum()
        assert iou >= 0.8, float(iou)
        assert grey[mask].mean() > 220 and grey[~mask].mean() < 110


@pytest.mark.parametrize("category", ["metal_nut", "grid"])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_masks_follow_their_images_through_the_resize(category, size, request):
    root = request.getfixturevalue(category)
    test = load_split(f"mvtec:{root}", "test", image_size=size)
    assert set(torch.unique(test.masks).tolist()) == {False, True}  # binary, not blurred
    _check_aligned(test.images, test.masks)


def test_masks_follow_their_images_through_the_centre_crop(tmp_path):
    """800x600 photos: the centre crop cuts 100 px from each side, from the masks as from the images."""
    root = write_inspect(tmp_path / "parts")
    test = load_split(f"inspect:{root}", "test", image_size=48)
    anomalous = test.select(test.labels == 1)
    assert anomalous.defect_types == ("dent", "scratch")
    _check_aligned(anomalous.images, anomalous.masks)
    # the scratch's square spans x 40..200 of 800: the crop keeps x 100..200 of it, the first 100 of 600 columns,
    # which the resize to 48 px makes columns 0..7
    columns = torch.nonzero(anomalous.masks[1].any(0)).flatten()
    assert columns.min() == 0 and columns.max() == 7


def test_without_ground_truth_there_are_no_masks(metal_nut):
    shutil.rmtree(metal_nut / "ground_truth")
    test = load_split(f"mvtec:{metal_nut}", "test", image_size=16)
    assert test.masks is None and test.defect_types == ("crack", "crack", "good", "good", "hole", "hole")
    assert load_split(f"mvtec:{metal_nut}", "heldout", image_size=16).masks is None


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


MVTEC_REFUSALS = [
    (lambda r: (r / "train" / "good").rename(r / "train" / "ok"), "no train/good/ folder; expected one MVTec AD"),
    (lambda r: _remove(r / "test"), "no test/ folder; expected one MVTec AD category: train/good/*.png"),
    (lambda r: _remove(r / "ground_truth" / "hole"), "test/hole/ has no mask folder ground_truth/hole/; expected"),
    (
        lambda r: (r / "ground_truth" / "scratch").mkdir(),
        "ground_truth/scratch/ matches no defect folder of test/ (crack, hole)",
    ),
    (
        lambda r: _remove(r / "ground_truth" / "crack" / "001_mask.png"),
        "test/crack/001.png has no mask ground_truth/crack/001_mask.png",
    ),
    (
        lambda r: shutil.copy(
            r / "ground_truth" / "crack" / "000_mask.png", r / "ground_truth" / "crack" / "7_mask.png"
        ),
        "ground_truth/crack/7_mask.png marks no image of test/crack/",
    ),
    (lambda r: (r / "extras").mkdir(), "extras/ is not part of the layout"),
    (lambda r: (r / "train" / "bad").mkdir(), "train/bad/ is not part of the layout: train/ holds good/ only"),
    (lambda r: shutil.copy(r / "test" / "good" / "000.png", r / "test" / "x.png"), "test/x.png is not in a test/<def"),
    (lambda r: (r / "test" / "crack" / "more").mkdir(), "test/crack/more/ is a folder inside test/crack/"),
    (lambda r: [_remove(p) for p in sorted((r / "train" / "good").iterdir())[1:]], "train/good/ holds 1 image"),
]


@pytest.mark.parametrize("change,needle", MVTEC_REFUSALS, ids=[needle for _, needle in MVTEC_REFUSALS])
def test_what_does_not_match_the_mvtec_layout_is_refused_in_one_line(metal_nut, change, needle):
    change(metal_nut)
    with pytest.raises(GenlabError) as err:
        load_split(f"mvtec:{metal_nut}", "train", image_size=16)
    message = _one_line(err)
    assert message.startswith(f"mvtec: {metal_nut}: ") and needle in message, message


def test_other_mvtec_refusals(metal_nut, tmp_path):
    with pytest.raises(GenlabError) as err:
        dataset_spec(f"mvtec:{tmp_path / 'nope'}")
    assert "not a directory; expected one MVTec AD category" in _one_line(err)
    with pytest.raises(GenlabError, match="mvtec dataset needs a path: --dataset mvtec:PATH"):
        dataset_spec("mvtec:")
    # a mask of another size than its image: refused when the test split is read
    Image.new("L", (512, 512)).save(metal_nut / "ground_truth" / "hole" / "001_mask.png")
    load_split(f"mvtec:{metal_nut}", "train", image_size=16)
    with pytest.raises(GenlabError) as err:
        load_split(f"mvtec:{metal_nut}", "test", image_size=16)
    assert "mask ground_truth/hole/001_mask.png is 512x512 and its image 700x700" in _one_line(err)
    (metal_nut / "test" / "good" / "001.png").write_bytes(b"not a png")
    with pytest.raises(GenlabError) as err:
        load_split(f"mvtec:{metal_nut}", "test", image_size=16)
    assert "cannot read image" in _one_line(err) and "001.png" in str(err.value)


def test_files_beside_the_layout_are_ignored(metal_nut):
    (metal_nut / "license.txt").write_text("CC BY-NC-SA 4.0")
    (metal_nut / "test" / "good" / ".DS_Store").write_bytes(b"\0")
    (metal_nut / ".cache").mkdir()
    assert len(load_split(f"mvtec:{metal_nut}", "test", image_size=16)) == 6


def test_the_held_out_share_is_seeded_and_sized():
    # 20% of the normal images, at least 20 where training keeps as many: every MVTec AD category (60..391 train/good)
    assert [_held_out(n, 1) for n in (2, 10, 30, 40, 60, 100, 209, 391)] == [1, 5, 15, 20, 20, 20, 42, 78]
    assert [_held_out(n, 2) for n in (3, 9, 60, 200)] == [1, 3, 20, 40]  # inspect: val and test, each


def test_the_held_out_share_is_the_same_wherever_the_folder_is(tmp_path):
    def category(root: Path) -> Path:  # 40 small train/good images: 20 held out
        for i in range(40):
            (root / "train" / "good").mkdir(parents=True, exist_ok=True)
            _image((16, 16), "L", i, None).save(root / "train" / "good" / f"{i:03d}.png")
        (root / "test" / "good").mkdir(parents=True)
        _image((16, 16), "L", 99, None).save(root / "test" / "good" / "000.png")
        return root

    first = category(tmp_path / "a" / "tile")
    val = load_split(f"mvtec:{first}", "val", image_size=16)
    assert len(val) == 20 and len(load_split(f"mvtec:{first}", "train", image_size=16)) == 20
    assert torch.equal(load_split(f"mvtec:{first}", "val", image_size=16).images, val.images)
    copy = shutil.copytree(first, tmp_path / "b" / "tile")
    assert torch.equal(load_split(f"mvtec:{copy}", "val", image_size=16).images, val.images)


def test_published_names_and_export_names(metal_nut, tmp_path):
    assert published_name("mvtec:/data/mvtec_anomaly_detection/brick") == "mvtec-brick"
    assert published_name("mvtec:/data/mvtec_anomaly_detection/brick/") == "mvtec-brick"
    assert published_name("inspect:/home/alice/parts") == "inspect-parts"
    assert published_name("mvtec-brick") == "mvtec-brick"  # a published name stays as it is
    assert default_name("vae", "mvtec:/data/mvtec_anomaly_detection/brick") == "genlab-vae-mvtec-brick"
    assert default_name("vae", "mvtec-brick") == "genlab-vae-mvtec-brick"  # from a manifest
    assert default_name("gan", "inspect:/home/alice/parts") == "genlab-gan-inspect-parts"
    assert default_name("vae", "folder:/home/alice/images") == "genlab-vae-images"
    # the content hash covers the images and the masks, not where they are
    original = dataset_hash(f"mvtec:{metal_nut}")
    copy = shutil.copytree(metal_nut, tmp_path / "elsewhere" / "metal_nut")
    assert dataset_hash(f"mvtec:{copy}") == original
    _mask((700, 700), (0, 0, 5)).save(copy / "ground_truth" / "hole" / "000_mask.png")
    assert dataset_hash(f"mvtec:{copy}") != original


def test_the_inspect_layout_with_type_folders(tmp_path):
    name = f"inspect:{write_inspect(tmp_path / 'parts')}"
    assert native_shape(name) == (64, 3)
    train, val, test = (load_split(name, s, image_size=16) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3, 3, 5)  # 9 normal: 3 / 3 / 3, and test also the 2 abnormal
    assert train.class_names == ("normal", "abnormal") and train.defect_types == ("normal",) * 3
    assert test.defect_types == ("dent", "scratch", "normal", "normal", "normal")
    assert test.labels.tolist() == [1, 1, 0, 0, 0]
    assert test.masks[:2].flatten(1).any(1).all() and not test.masks[2:].any()
    rows = {
        s: {d.images[i].numpy().tobytes() for i in range(len(d))} for s, d in (("t", train), ("v", val), ("x", test))
    }
    assert not rows["t"] & rows["v"] and not rows["t"] & rows["x"] and not rows["v"] & rows["x"]


@pytest.mark.parametrize("mask_suffix", ["", "_mask"])
def test_the_inspect_layout_flat_and_without_masks(tmp_path, mask_suffix):
    flat = write_inspect(tmp_path / "flat", typed=False, mask_suffix=mask_suffix)
    test = load_split(f"inspect:{flat}", "test", image_size=16)
    assert test.defect_types[:2] == ("abnormal", "abnormal") and test.masks[:2].flatten(1).any(1).all()
    bare = write_inspect(tmp_path / "bare", masks=False)
    assert load_split(f"inspect:{bare}", "test", image_size=16).masks is None
    shutil.rmtree(bare / "abnormal")  # normal images only: train, val, and a test of normal images
    assert load_split(f"inspect:{bare}", "test", image_size=16).labels.tolist() == [0, 0, 0]


INSPECT_REFUSALS = [
    (lambda r: (r / "normal").rename(r / "good"), "good/ is not part of the layout; expected normal/ (required)"),
    (lambda r: _remove(r / "normal"), "no normal/ folder; expected normal/ (required), abnormal/ or abnormal/<type>/"),
    (
        lambda r: shutil.copy(r / "normal" / "part0.png", r / "abnormal" / "loose.png"),
        "abnormal/ holds both images and type folders (dent/); use one or the other",
    ),
    (lambda r: (r / "mask" / "dent").rename(r / "mask" / "dents"), "mask/dents/ matches no abnormal/<type>/ folder"),
    (lambda r: _remove(r / "mask" / "scratch"), "abnormal/scratch/ has no mask folder mask/scratch/"),
    (
        lambda r: _remove(r / "mask" / "dent" / "dent-1_mask.png"),
        "abnormal/dent/dent-1.png has no mask mask/dent/dent-1.png or dent-1_mask.png",
    ),
    (
        lambda r: shutil.copy(r / "mask" / "dent" / "dent-1_mask.png", r / "mask" / "dent" / "dent-1.png"),
        "abnormal/dent/dent-1.png has 2 masks (dent-1.png, dent-1_mask.png)",
    ),
    (
        lambda r: shutil.copy(r / "mask" / "dent" / "dent-1_mask.png", r / "mask" / "dent" / "dent-2.png"),
        "mask/dent/dent-2.png marks no image of abnormal/dent/",
    ),
    (lambda r: _remove(r / "abnormal"), "mask/ without abnormal/: masks mark abnormal images"),
    (lambda r: [_remove(p) for p in sorted((r / "normal").iterdir())[2:]], "normal/ holds 2 images"),
    (lambda r: (r / "normal" / "more").mkdir(), "normal/more/ is a folder inside normal/, which holds images only"),
]


@pytest.mark.parametrize("change,needle", INSPECT_REFUSALS, ids=[needle for _, needle in INSPECT_REFUSALS])
def test_what_does_not_match_the_inspect_layout_is_refused_in_one_line(tmp_path, change, needle):
    root = write_inspect(tmp_path / "parts")
    change(root)
    with pytest.raises(GenlabError) as err:
        load_split(f"inspect:{root}", "train", image_size=16)
    message = _one_line(err)
    assert message.startswith(f"inspect: {root}: ") and needle in message, message


def test_a_flat_mask_folder_with_type_folders_is_refused(tmp_path):
    root = write_inspect(tmp_path / "flat", typed=False)
    (root / "mask" / "dent").mkdir()
    with pytest.raises(GenlabError) as err:
        dataset_spec(f"inspect:{root}")
    assert "mask/dent/ is a folder, and abnormal/ holds its images directly" in _one_line(err)


def test_genlab_train_learns_one_class_on_train_good_and_writes_a_checkpoint(metal_nut, tmp_path, capsys):
    tiny = [f"{k}={v}" for k, v in {**TINY, "image_size": 32, "quality_every": 0, "sample_count": 4}.items()]
    out = tmp_path / "run"
    argv = ["train", "vae", "--dataset", f"mvtec:{metal_nut}", "--out", str(out), "--normal-class", "0"]
    code = main([*argv, "--batch-size", "4", "--epochs", "2", *(a for kv in tiny for a in ("--set", kv))])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"data: mvtec:{metal_nut}: 5 training and 5 validation images of class good, 3x32x32" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["complete"]  # one batch of 4 per epoch
    data = ckpt["data"]
    assert data["dataset"] == f"mvtec:{metal_nut}" and data["dataset_hash"] == dataset_hash(f"mvtec:{metal_nut}")
    assert data["normal_class"] == 0 and list(data["class_names"]) == ["good", "anomalous"]
    assert ckpt["model_config"]["image_size"] == 32 and ckpt["model_config"]["channels"] == 3
    assert ckpt["calibration"]["split"] == "val" and ckpt["calibration"]["n"] == 5  # the held-out share of train/good


def test_an_inspection_set_trains_one_class_on_its_normal_images_without_normal_class(metal_nut, tmp_path, capsys):
    from genlab.config import ONE_CLASS_STEPS
    from genlab.models import model_class

    tiny = [f"{k}={v}" for k, v in {**TINY, "image_size": 16, "quality_every": 0, "sample_count": 4}.items()]
    out = tmp_path / "run"
    argv = ["train", "vae", "--dataset", f"mvtec:{metal_nut}", "--out", str(out), "--batch-size", "4"]
    code = main([*argv, "--max-steps", "2", *(a for kv in tiny for a in ("--set", kv))])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "5 training and 5 validation images of class good" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["data"]["normal_class"] == 0 and ckpt["train_config"]["normal_class"] == 0
    # the one-class defaults: ONE_CLASS_STEPS steps of one batch each, and the family's one-class learning rate
    assert ckpt["train_config"]["epochs"] == ONE_CLASS_STEPS
    assert ckpt["train_config"]["lr"] == model_class("vae").one_class_lr


@pytest.mark.parametrize("kind, normal", [("mvtec", "good"), ("inspect", "normal")])
@pytest.mark.parametrize(
    "flags, needle",
    [
        (
            ["--normal-class", "1"],
            "--normal-class 1: an inspection set trains on its normal images, class 0 ({normal})",
        ),
        (["--conditional"], "--conditional needs class labels to learn, and the training images of an inspection set"),
        (["--set", "conditional=true"], "--conditional needs class labels"),
    ],
)
def test_another_normal_class_or_a_conditional_model_is_refused_on_an_inspection_set(
    kind, normal, flags, needle, tmp_path, capsys
):
    root = write_mvtec(tmp_path / "bottle", 32, "RGB") if kind == "mvtec" else write_inspect(tmp_path / "parts")
    out = tmp_path / "run"
    assert main(["train", "vae", "--dataset", f"{kind}:{root}", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab train: error: "), err
    assert needle.format(normal=normal) in err[0] and f"({normal})" in err[0]
    assert not (out / "last.pt").exists()
