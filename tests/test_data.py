"""Tests for cookbook.data. Everything is tiny and offline: folders and archives are built in tmp_path."""

import math
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cookbook import data
from cookbook.data import DataError, Dataset

# Each class of the test folders gets its own colour, so labels can be checked against pixels.
COLOURS = {"cat": (220, 30, 30), "dog": (30, 30, 220), "owl": (30, 200, 30)}


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_DATA", str(tmp_path / "cache"))


def make_tree(root, splits=None, size=8):
    """Write an ImageFolder tree: splits maps split -> class -> number of PNGs."""
    if splits is None:
        splits = {"train": {"cat": 3, "dog": 2, "owl": 3}, "test": {"cat": 1, "dog": 2, "owl": 1}}
    for split, classes in splits.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (size, size), COLOURS[cls]).save(folder / f"{i:03d}.png")
    return root


def make_archive(tmp_path, suffix, wrapped):
    tree = make_tree(tmp_path / "tree")
    mode = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.xz": "w:xz"}[suffix]
    archive = tmp_path / f"pets{suffix}"
    with tarfile.open(archive, mode) as tar:
        if wrapped:
            tar.add(tree, arcname="pets")
        else:
            for split in ("train", "test"):
                tar.add(tree / split, arcname=split)
    return archive


# ---------------------------------------------------------------- shapes

def test_make_shapes_types_balance_and_factor_ranges():
    x, y, f = data.make_shapes(160, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (160, 3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (160,)
    assert torch.bincount(y, minlength=8).tolist() == [20] * 8
    assert set(f) == {"hue", "scale", "x", "y", "rotation"}
    assert all(v.dtype == torch.float32 and v.shape == (160,) for v in f.values())
    assert 0 <= f["hue"].min() and f["hue"].max() < 1
    assert 0.4 <= f["scale"].min() and f["scale"].max() < 0.7
    assert 0 <= f["rotation"].min() and f["rotation"].max() < 2 * math.pi
    for c in ("x", "y"):  # the whole shape lies inside the image
        assert (f[c] - f["scale"] / 2 >= 0).all() and (f[c] + f["scale"] / 2 <= 1).all()
    assert x.float().std() > 30  # not blank


def test_make_shapes_is_deterministic_and_seed_dependent():
    a = data.make_shapes(40, seed=3)
    b = data.make_shapes(40, seed=3)
    c = data.make_shapes(40, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2]["hue"], c[2]["hue"])


def test_shapes_factors_describe_the_image():
    # The centre of a disk is at (x, y) and has the foreground hue.
    x, y, f = data.make_shapes(400, seed=1)
    disks = (y == data.SHAPE_CLASSES.index("disk")).nonzero().squeeze(1)
    rows = (f["y"][disks] * 32).long()
    cols = (f["x"][disks] * 32).long()
    rgb = x[disks, :, rows, cols].float().numpy() / 255
    hue = np.array([_hue(*p) for p in rgb])
    error = np.abs((hue - f["hue"][disks].numpy() + 0.5) % 1 - 0.5)
    assert np.mean(error < 0.08) > 0.9


def _hue(r, g, b):
    hi, lo = max(r, g, b), min(r, g, b)
    if hi == lo:
        return 0.0
    if hi == r:
        h = (g - b) / (hi - lo)
    elif hi == g:
        h = 2 + (b - r) / (hi - lo)
    else:
        h = 4 + (r - g) / (hi - lo)
    return (h / 6) % 1


def test_load_shapes_sizes_factors_and_disjoint_splits():
    ds = data.load("shapes", subset=80, test_subset=24, seed=2)
    assert (len(ds.train_x), len(ds.test_x)) == (80, 24)
    assert ds.classes == list(data.SHAPE_CLASSES) and ds.num_classes == 8 and ds.image_size == 32
    assert torch.bincount(ds.train_y).tolist() == [10] * 8
    assert torch.bincount(ds.test_y).tolist() == [3] * 8
    assert {s: len(ds.factors[s]["hue"]) for s in ("train", "test")} == {"train": 80, "test": 24}
    assert not torch.equal(ds.train_x[:24], ds.test_x)  # train and test come from different seeds
    again = data.load("shapes", subset=80, test_subset=24, seed=2)
    other = data.load("shapes", subset=80, test_subset=24, seed=3)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_x, again.test_x)
    assert not torch.equal(ds.train_x, other.train_x)


def test_shapes_image_size_resizes():
    ds = data.load("shapes", subset=16, test_subset=8, image_size=48)
    assert ds.train_x.shape == (16, 3, 48, 48) and ds.test_x.shape == (8, 3, 48, 48)
    assert data.make_shapes(8, 0, image_size=16)[0].shape == (8, 3, 16, 16)


# ---------------------------------------------------------------- Dataset

def test_dataset_to_split_and_repr():
    ds = data.load("shapes", subset=16, test_subset=8)
    assert ds.to("cpu") is ds
    x, y = ds.split("test")
    assert x is ds.test_x and y is ds.test_y
    text = repr(ds)
    assert "\n" not in text and all(s in text for s in ("shapes", "train=16", "test=8", "32", "disk", "cpu"))
    moved = ds.to("meta")  # a device without memory: checks every tensor moves, factors included
    assert moved is ds and ds.device.type == "meta" and ds.test_y.device.type == "meta"
    assert all(v.device.type == "meta" for f in ds.factors.values() for v in f.values())


def test_split_rejects_unknown_split():
    ds = data.load("shapes", subset=8, test_subset=8)
    with pytest.raises(DataError, match="'train', 'test'"):
        ds.split("val")


def test_dataset_rejects_wrong_dtypes():
    x, y = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DataError, match="uint8"):
        Dataset("bad", x, y, x, y, ["a"])


# ---------------------------------------------------------------- subsets

def test_stratified_indices_balance_small_classes_and_seed():
    y = torch.tensor([0] * 2 + [1] * 10 + [2] * 10)
    idx = data.stratified_indices(y, 12, 3, seed=0)
    assert torch.bincount(y[idx]).tolist() == [2, 5, 5]  # class 0's shortfall goes to the others
    assert torch.equal(idx, idx.unique())
    assert torch.equal(idx, data.stratified_indices(y, 12, 3, seed=0))
    assert not torch.equal(idx, data.stratified_indices(y, 12, 3, seed=1))
    counts = torch.bincount(y[data.stratified_indices(y, 7, 3, seed=5)]).tolist()
    assert sorted(counts) == [2, 2, 3]


def test_folder_subsets_are_stratified(tmp_path):
    splits = {"train": {"cat": 6, "dog": 6, "owl": 6}, "test": {"cat": 2, "dog": 2, "owl": 2}}
    root = make_tree(tmp_path / "pets", splits)
    ds = data.load(f"folder:{root}", subset=9, test_subset=3, seed=1)
    assert torch.bincount(ds.train_y).tolist() == [3, 3, 3]
    assert torch.bincount(ds.test_y).tolist() == [1, 1, 1]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, 100])
def test_bad_subset(tmp_path, bad):
    root = make_tree(tmp_path / "pets")
    with pytest.raises(DataError, match="subset"):
        data.load(f"folder:{root}", subset=bad)
    if bad != 100:  # shapes generates as many as asked, so only the invalid values fail
        with pytest.raises(DataError, match="test_subset"):
            data.load("shapes", test_subset=bad)


def test_bad_image_size():
    with pytest.raises(DataError, match="image_size"):
        data.load("shapes", subset=8, image_size=0)


# ---------------------------------------------------------------- folder:PATH

def check_pets(ds):
    assert ds.classes == ["cat", "dog", "owl"]
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2] and ds.test_y.tolist() == [0, 1, 1, 2]
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape == (8, 3, 8, 8)
    for x, y in (ds.split("train"), ds.split("test")):
        for image, label in zip(x, y):  # each image has its class's colour
            assert image[:, 0, 0].tolist() == list(COLOURS[ds.classes[label]])


def test_folder_plain(tmp_path):
    root = make_tree(tmp_path / "pets")
    ds = data.load(f"folder:{root}")
    check_pets(ds)
    assert ds.factors is None and ds.name == f"folder:{root}"


def test_folder_name_is_the_path_as_given(tmp_path, monkeypatch):
    make_tree(tmp_path / "pets")
    monkeypatch.chdir(tmp_path)
    assert data.load("folder:pets").name == "folder:pets"  # decoded
    assert data.load("folder:./pets").name == "folder:./pets"  # from the cache


@pytest.mark.parametrize("suffix,wrapped", [
    (".tar", False), (".tar", True), (".tar.gz", True), (".tgz", False), (".tar.xz", True),
])
def test_folder_archives(tmp_path, suffix, wrapped):
    check_pets(data.load(f"folder:{make_archive(tmp_path, suffix, wrapped)}"))


def test_folder_accepts_val_instead_of_test(tmp_path):
    root = make_tree(tmp_path / "pets", {"train": {"cat": 2, "dog": 1}, "val": {"cat": 1, "dog": 1}})
    ds = data.load(f"folder:{root}")
    assert ds.test_y.tolist() == [0, 1]


def test_folder_cache_hit_skips_decoding_and_change_invalidates(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "pets")
    first = data.load(f"folder:{root}")
    cached = list((tmp_path / "cache" / "folders").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # and no temporary file left behind

    def no_decoding(source, name):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data, "_decode", no_decoding)
    second = data.load(f"folder:{root}", subset=4)
    assert torch.equal(first.train_x, data.load(f"folder:{root}").train_x)
    assert sorted(torch.bincount(second.train_y).tolist()) == [1, 1, 2]

    Image.new("RGB", (8, 8), COLOURS["cat"]).save(root / "train" / "cat" / "new.png")
    with pytest.raises(AssertionError, match="decoded"):
        data.load(f"folder:{root}")


def test_folder_mixed_sizes_need_image_size(tmp_path):
    root = make_tree(tmp_path / "pets")
    Image.new("RGB", (12, 10), COLOURS["dog"]).save(root / "test" / "dog" / "big.png")
    with pytest.raises(DataError, match=r"test/dog/big.png.*image_size="):
        data.load(f"folder:{root}")
    ds = data.load(f"folder:{root}", image_size=6)
    assert ds.train_x.shape == (8, 3, 6, 6) and ds.test_x.shape == (5, 3, 6, 6)
    assert ds.test_x[2, :, 3, 3].tolist() == list(COLOURS["dog"])


def test_folder_image_size_resizes(tmp_path):
    ds = data.load(f"folder:{make_tree(tmp_path / 'pets')}", image_size=16)
    assert ds.train_x.shape == (8, 3, 16, 16) and ds.test_x.shape == (4, 3, 16, 16)


# ---------------------------------------------------------------- errors

def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match="shapes, cifar10, folder:PATH"):
        data.load("imagenet")


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nowhere'}")


def test_file_that_is_not_an_archive(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither a folder nor an archive"):
        data.load(f"folder:{tmp_path / 'notes.txt'}")


def test_corrupt_archive(tmp_path):
    archive = make_archive(tmp_path, ".tar.gz", wrapped=False)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read the archive"):
        data.load(f"folder:{archive}")


@pytest.mark.parametrize("splits,message", [
    ({"test": {"cat": 1}}, "no train/ folder"),
    ({"train": {"cat": 1}}, r"no test/ \(or val/\) folder"),
])
def test_missing_split(tmp_path, splits, message):
    with pytest.raises(DataError, match=message):
        data.load(f"folder:{make_tree(tmp_path / 'pets', splits)}")


def test_empty_split(tmp_path):
    root = make_tree(tmp_path / "pets", {"train": {"cat": 1}})
    (root / "test").mkdir()
    with pytest.raises(DataError, match="test/ has no class folders"):
        data.load(f"folder:{root}")


def test_empty_class_folder(tmp_path):
    root = make_tree(tmp_path / "pets")
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="train/emu/ has no images"):
        data.load(f"folder:{root}")


def test_empty_class_folder_in_archive(tmp_path):
    root = make_tree(tmp_path / "pets")
    (root / "test" / "emu").mkdir()
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")
    with pytest.raises(DataError, match="test/emu/ has no images"):
        data.load(f"folder:{archive}")


def test_corrupt_image_is_named(tmp_path):
    root = make_tree(tmp_path / "pets")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="train/dog/broken.jpg"):
        data.load(f"folder:{root}")


def test_class_mismatch_names_the_difference(tmp_path):
    root = make_tree(tmp_path / "pets", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "owl": 1}})
    with pytest.raises(DataError, match=r"only in train/: \['dog'\], only in test/: \['owl'\]"):
        data.load(f"folder:{root}")


# ---------------------------------------------------------------- cifar10

def test_cifar10_failed_download_says_how_to_work_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(DataError) as error:
        data.load("cifar10")
    message = str(error.value)
    assert all(s in message for s in ("CIFAR-10", "network is unreachable", "load('shapes')", "folder:PATH"))


def test_cifar10_converts_torchvision_dataset(monkeypatch):
    class FakeCIFAR10:  # torchvision's layout: data uint8 (N, 32, 32, 3), targets list of int
        classes = ["airplane", "automobile"]

        def __init__(self, root, train, download):
            assert download and root == os.path.join(os.environ["COOKBOOK_DATA"], "cifar10")
            n = 6 if train else 4
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.data[:, 0, 1, 2] = 7  # row 0, column 1, blue
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    ds = data.load("cifar10")
    assert ds.classes == ["airplane", "automobile"] and ds.name == "cifar10"
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert (ds.train_x[:, 2, 0, 1] == 7).all() and ds.train_x.sum() == 6 * 7
    assert ds.test_y.tolist() == [0, 1, 0, 1] and ds.test_y.dtype == torch.int64
    small = data.load("cifar10", subset=4, test_subset=2)
    assert torch.bincount(small.train_y).tolist() == [2, 2] and len(small.test_x) == 2
