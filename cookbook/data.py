"""Datasets as uint8 tensors: ``shapes`` (embedded), ``folder:PATH`` and ``cifar10``.

``load(name)`` returns a :class:`Dataset` whose images are uint8 tensors of shape
(N, 3, H, W) in CPU memory. Training code moves them once with ``.to(device)`` and
slices batches by index; there is no per-sample DataLoader.

``shapes`` (the offline default)
    Procedurally generated, nothing to download, deterministic from ``seed``.
    8 classes, the shape: disk, ring, square, triangle, plus, star, crescent, bar.
    Each image also has a random foreground hue, scale (40-70% of the image
    width), position and rotation, drawn on a darker, random-colour background
    with pixel noise. These nuisance factors dominate pixel distances, so raw
    pixels are a weak representation while the shape stays easy to see. The factors are returned in ``Dataset.factors``.

    Measured on the development machine (2 CPU cores shared with other jobs):

    - speed: about 31,000 images/s on one core (10,000 images in 0.3 s)::

        python -c "import time,torch; torch.set_num_threads(1); \\
            from cookbook.data import make_shapes as m; m(100, 0); \\
            t=time.perf_counter(); m(10_000, 0); print(10_000/(time.perf_counter()-t))"

    - raw-pixel kNN on ``load("shapes")`` (10,000 train / 2,000 test; cosine on
      flattened pixels scaled to [0, 1], k=200, votes weighted by exp(sim / 0.1)):
      28.0%; chance is 12.5%.

``folder:PATH``
    A folder, or a .tar / .tar.gz / .tgz / .tar.xz archive of one, laid out as
    ``train/<class>/<image>`` and ``test/<class>/<image>`` (``val/`` is accepted
    when ``test/`` is absent); an archive may wrap these in one top-level folder.
    Decoded once with PIL and cached as .npz under ``$COOKBOOK_DATA`` (default
    ``~/.cache/cookbook``), keyed by the path, size and modification time. For the
    CIFAR-10 copy of 60,000 JPEGs in a 19 MB .tar.xz, the first load took 14 s
    (23 s on a busier machine) and a cached load 0.3 s (185 MB .npz).

``cifar10``
    torchvision's CIFAR-10, downloaded into ``$COOKBOOK_DATA/cifar10``.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import math
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DATASETS = ("shapes", "cifar10", "folder:PATH")
SPLITS = ("train", "test")
SHAPE_CLASSES = ("disk", "ring", "square", "triangle", "plus", "star", "crescent", "bar")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")

SHAPES_TRAIN_SIZE = 10_000
SHAPES_TEST_SIZE = 2_000
_CACHE_VERSION = 1


class DataError(ValueError):
    """A bad input to this module; the message says what was wrong and what to do."""


@dataclass
class Dataset:
    """Images and labels of a train and a test split.

    train_x, test_x: uint8 (N, 3, H, W), pixel values 0..255.
    train_y, test_y: int64 (N,), indices into ``classes``.
    factors: for ``shapes`` only, ``{"train": {...}, "test": {...}}`` where each
    inner dict maps "hue", "scale", "x", "y", "rotation" to float32 (N,)
    (units in :func:`make_shapes`); None for other datasets.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    factors: dict[str, dict[str, torch.Tensor]] | None = None

    def __post_init__(self):
        for split in SPLITS:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
                raise DataError(f"{split}_x must be uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise DataError(f"{split}_y must be int64 ({len(x)},), got {y.dtype} {tuple(y.shape)}")

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def image_size(self) -> int:
        """Image height in pixels."""
        return self.train_x.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device) -> Dataset:
        """Move every tensor (factors included) to ``device`` in place; returns self."""
        for field in ("train_x", "train_y", "test_x", "test_y"):
            setattr(self, field, getattr(self, field).to(device))
        if self.factors is not None:
            self.factors = {s: {k: v.to(device) for k, v in f.items()} for s, f in self.factors.items()}
        return self

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (N, 3, H, W), labels int64 (N,)) of "train" or "test"."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid splits: {', '.join(map(repr, SPLITS))}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def __repr__(self) -> str:
        shown = ", ".join(self.classes[:10]) + (", ..." if self.num_classes > 10 else "")
        return (
            f"Dataset({self.name!r}, train={len(self.train_x)}, test={len(self.test_x)}, "
            f"image_size={self.image_size}, classes={self.num_classes} [{shown}], device={self.device})"
        )


def load(
    name: str,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name: "shapes", "cifar10" or "folder:PATH".

    subset / test_subset: number of train / test images, a stratified sample
    (equal count per class as far as possible) drawn with ``seed``. For
    "shapes" they are the numbers of images generated (defaults 10,000 / 2,000).
    image_size: resize to image_size x image_size pixels (antialiased bilinear)
    when it differs from the native size.

    Raises :class:`DataError` (a ValueError) saying what to change for a bad
    name, path, archive, count or size, and for data with fewer than 2 classes
    (in the dataset, or in the train split after ``subset``): the evaluations
    with labels are meaningless there.
    """
    if image_size is not None and not _is_positive_int(image_size):
        raise DataError(f"image_size must be a positive int (pixels), got {image_size!r}")
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, one of {', '.join(DATASETS)}; got {name!r}")

    if name == "shapes":
        n = SHAPES_TRAIN_SIZE if subset is None else _check_count(subset, "subset", None)
        m = SHAPES_TEST_SIZE if test_subset is None else _check_count(test_subset, "test_subset", None)
        size = image_size or 32
        # 2*seed and 2*seed+1 never collide, so train and test images are always distinct draws.
        train_x, train_y, train_f = make_shapes(n, 2 * seed, size)
        test_x, test_y, test_f = make_shapes(m, 2 * seed + 1, size)
        ds = Dataset("shapes", train_x, train_y, test_x, test_y, list(SHAPE_CLASSES),
                     {"train": train_f, "test": test_f})
        _check_two_classes(ds, subset)
        return ds

    if name == "cifar10":
        ds = _load_cifar10()
    elif name.startswith("folder:"):
        ds = _load_folder(name[len("folder:"):], image_size)
    else:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")

    for split, count in (("train", subset), ("test", test_subset)):
        if count is not None:
            x, y = ds.split(split)
            what = "subset" if split == "train" else "test_subset"
            idx = stratified_indices(y, _check_count(count, what, len(y)), ds.num_classes, seed)
            setattr(ds, f"{split}_x", x[idx])
            setattr(ds, f"{split}_y", y[idx])
    if image_size is not None:
        ds.train_x = resize(ds.train_x, image_size)
        ds.test_x = resize(ds.test_x, image_size)
    _check_two_classes(ds, subset)
    return ds


def _check_two_classes(ds: Dataset, subset: int | None) -> None:
    """kNN and the linear probe need 2 classes; with one, every prediction is right by construction."""
    if ds.num_classes < 2:
        raise DataError(f"{ds.name} has {ds.num_classes} class ({', '.join(ds.classes) or 'none'}); training "
                        f"uses no labels, but the kNN and linear-probe evaluations need at least 2 classes: "
                        f"add a second class folder under train/ and test/")
    if len(ds.train_y.unique()) < 2:
        raise DataError(f"subset={subset} keeps a single class of the train split; ask for at least "
                        f"{ds.num_classes} images so that every class is represented")


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_count(value, what: str, available: int | None) -> int:
    """Validate a requested number of images; available is None when there is no upper limit."""
    if not _is_positive_int(value):
        raise DataError(f"{what} must be a positive int (number of images), got {value!r}")
    if available is not None and value > available:
        raise DataError(f"{what}={value} asks for more images than the split has ({available}); "
                        f"ask for at most {available}, or for all of them with {what}=None "
                        f"(on the command line: --{what.replace('_', '-')} {available})")
    return value


def stratified_indices(y: torch.Tensor, n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices (int64 (n,), ascending) of a class-balanced random sample of labels ``y``.

    Every class gets n // num_classes items where it has that many; the shortfall
    of small classes and the remainder go to other classes (chosen by ``seed``).
    """
    g = torch.Generator().manual_seed(seed)
    members = [(y == c).nonzero().squeeze(1) for c in range(num_classes)]
    tie_break = torch.randperm(num_classes, generator=g).tolist()
    # Water-filling: visit classes from smallest to largest, each taking an equal share of what is left.
    order = sorted(range(num_classes), key=lambda c: (len(members[c]), tie_break[c]))
    left, picked = n, []
    for i, c in enumerate(order):
        take = min(len(members[c]), left // (num_classes - i))
        left -= take
        picked.append(members[c][torch.randperm(len(members[c]), generator=g)[:take]])
    return torch.cat(picked).sort().values


def resize(x: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size), antialiased bilinear.

    Returns ``x`` itself when it already has that size. Works in chunks so that
    the float copy stays small.
    """
    if tuple(x.shape[2:]) == (size, size):
        return x
    out = torch.empty(len(x), x.shape[1], size, size, dtype=torch.uint8, device=x.device)
    for i in range(0, len(x), chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------- shapes

# Each shape is a test on shape coordinates (u, v): the shape fits in the unit disk.
def _polygon(u, v, sides, apothem):
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(sides):
        a = 2 * math.pi * k / sides + math.pi / 2
        inside &= u * math.cos(a) + v * math.sin(a) < apothem
    return inside


def _star(u, v):
    r = torch.sqrt(u * u + v * v)
    t = torch.atan2(v, u) * (5 / (2 * math.pi))
    to_tip = (t - torch.floor(t) - 0.5).abs() * 2  # 1 at a point of the star, 0 halfway between points
    return r < 0.42 + 0.58 * to_tip


_SHAPE_TESTS = {
    "disk": lambda u, v: u * u + v * v < 1.0,
    "ring": lambda u, v: ((u * u + v * v) - 0.5625).abs() < 0.4375,  # 0.5 < r < 1
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) < 0.7,  # corners at radius 0.99
    "triangle": lambda u, v: _polygon(u, v, 3, 0.5),  # circumradius 1
    "plus": lambda u, v: torch.minimum(torch.maximum(u.abs() / 0.32, v.abs() / 0.95),
                                       torch.maximum(v.abs() / 0.32, u.abs() / 0.95)) < 1.0,
    "star": _star,
    "crescent": lambda u, v: (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.75**2),
    "bar": lambda u, v: (u.abs() < 0.95) & (v.abs() < 0.3),
}

_SCALE = (0.4, 0.7)  # shape diameter as a fraction of the image width
_NOISE_STD = 0.02  # pixel noise, pixel values in [0, 1]
# HSV value (brightness) ranges: the shape is always brighter than the background, so it
# survives grayscale and brightness jitter. With overlapping ranges (and background
# gratings, an earlier design) SimCLR at CPU budgets matched views on colour and texture
# instead and stayed at raw-pixel kNN; with this gap it beats raw pixels (tests/test_end_to_end.py).
_FG_VALUE = (0.85, 1.0)
_BG_VALUE = (0.15, 0.45)
_CHUNK = 256  # images rendered at once: small temporaries are much faster to allocate


def _hsv_to_rgb(h, s, v):
    """float (n,) hue, saturation, value in [0, 1] -> float (n, 3) RGB in [0, 1]."""
    k = (h[:, None] * 6 + torch.tensor([5.0, 3.0, 1.0])) % 6
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def make_shapes(n: int, seed: int, image_size: int = 32):
    """Generate ``n`` shapes images, deterministically from ``seed``.

    Returns (images uint8 (n, 3, image_size, image_size), labels int64 (n,),
    factors dict of float32 (n,)). Labels index SHAPE_CLASSES and are balanced
    (counts differ by at most one). Factors, per image:
      hue       foreground hue in [0, 1)
      scale     shape diameter / image width, in [0.4, 0.7)
      x, y      shape centre / image width (x from the left, y from the top), in (0, 1)
      rotation  radians in [0, 2*pi), counter-clockwise on screen
    Images are rendered at 32x32 (2x2 supersampled) and resized if image_size differs.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]
    hue = uniform(0, 1, n)
    scale = uniform(*_SCALE, n)
    x = 0.5 + uniform(-0.5, 0.5, n) * (1 - scale)  # keeps the shape inside the image
    y = 0.5 + uniform(-0.5, 0.5, n) * (1 - scale)
    rotation = uniform(0, 2 * math.pi, n)
    p = {
        "label": labels, "scale": scale, "x": x, "y": y, "rotation": rotation,
        "fg": _hsv_to_rgb(hue, uniform(0.6, 1, n), uniform(*_FG_VALUE, n)),
        # Background hue at least 0.2 away from the shape's so the shape never vanishes.
        "bg": _hsv_to_rgb((hue + uniform(0.2, 0.8, n)) % 1, uniform(0.2, 0.8, n), uniform(*_BG_VALUE, n)),
    }
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for i in range(0, n, _CHUNK):
        chunk = {k: v[i:i + _CHUNK] for k, v in p.items()}
        images[i:i + _CHUNK] = _render(chunk, _NOISE_STD * torch.randn(len(chunk["label"]), 1, 32, 32, generator=g))
    factors = {"hue": hue, "scale": scale, "x": x, "y": y, "rotation": rotation}
    return resize(images, image_size), labels, factors


def _render(p, noise):
    """Draw a chunk of images from their parameters ``p``; returns uint8 (n, 3, 32, 32)."""
    n, S = len(p["label"]), 32
    # Pixel centres in [-1, 1]. The 2x2 supersamples are laid out as (offset, pixel), so that
    # averaging them is a sum of four contiguous blocks.
    fine = ((torch.arange(2)[:, None] + 2 * torch.arange(S) + 0.5) / S - 1).reshape(2 * S)
    cos = torch.cos(p["rotation"]) / p["scale"]
    sin = torch.sin(p["rotation"]) / p["scale"]
    alpha = torch.empty(n, S, S)
    for k, shape in enumerate(SHAPE_CLASSES):
        i = (p["label"] == k).nonzero().squeeze(1)
        if len(i) == 0:
            continue
        dx = fine[None, None, :] - (2 * p["x"][i] - 1)[:, None, None]  # (m, 1, 2S)
        dy = fine[None, :, None] - (2 * p["y"][i] - 1)[:, None, None]  # (m, 2S, 1)
        c, s = cos[i, None, None], sin[i, None, None]
        # Rotate by -rotation into shape coordinates. Screen y points down, so this turns the
        # shape counter-clockwise on screen. Sums of (m,1,2S) and (m,2S,1) terms: one full-size op each.
        u = c * dx - s * dy
        v = s * dx + c * dy
        inside = _SHAPE_TESTS[shape](u, v).view(len(i), 2, S, 2, S).to(torch.uint8)
        coverage = inside[:, 0, :, 0] + inside[:, 0, :, 1] + inside[:, 1, :, 0] + inside[:, 1, :, 1]
        alpha[i] = coverage.float() / 4

    img = p["bg"][:, :, None, None].expand(n, 3, S, S).clone()  # flat background colour
    img.lerp_(p["fg"][:, :, None, None].expand(n, 3, S, S), alpha[:, None])
    img.add_(noise)
    return img.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- folder:PATH

def cache_dir() -> Path:
    """Where downloads and decoded folders are cached: $COOKBOOK_DATA, default ~/.cache/cookbook."""
    return Path(os.environ.get("COOKBOOK_DATA") or "~/.cache/cookbook").expanduser()


def _decode(source: str | bytes, name: str) -> np.ndarray:
    """Decode one image file (a path, or the file's bytes) to uint8 (H, W, 3) RGB."""
    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            return np.array(image.convert("RGB"))  # a writable copy
    except Exception as e:
        raise DataError(f"cannot decode image {name} ({type(e).__name__}: {e}); delete or replace this file") from e


def _load_folder(path_text: str, image_size: int | None) -> Dataset:
    if not path_text:
        raise DataError("folder: needs a path, e.g. load('folder:/data/my_images')")
    path = Path(path_text).expanduser().absolute()
    name = f"folder:{path_text}"  # as the caller wrote it: a printed name never reveals an absolute path
    if not path.exists():
        raise DataError(f"{path} does not exist; pass an existing folder or .tar/.tar.gz/.tgz/.tar.xz archive "
                        f"laid out as train/<class>/<image> and test/<class>/<image>")
    if not (path.is_dir() or path.name.endswith(ARCHIVE_SUFFIXES)):
        raise DataError(f"{path} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")

    # The cache holds images at their own size; a folder of mixed sizes can only be cached resized.
    stat_key = _stat_key(path)
    candidates = [_cache_file(path, stat_key, None)]
    if image_size is not None:
        candidates.append(_cache_file(path, stat_key, image_size))
    for cache_file in candidates:
        if cache_file.exists():
            try:
                with np.load(cache_file) as z:
                    arrays = {k: torch.from_numpy(z[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
                    classes = z["classes"].tolist()
                return Dataset(name, **arrays, classes=classes)
            except Exception as e:
                warnings.warn(f"ignoring unreadable cache {cache_file} ({e}); decoding {path} again")

    ds, resized = _decode_tree(path, image_size)
    ds.name = name
    cache_file = _cache_file(path, stat_key, image_size if resized else None)
    tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, train_x=ds.train_x.numpy(), train_y=ds.train_y.numpy(), test_x=ds.test_x.numpy(),
                     test_y=ds.test_y.numpy(), classes=np.array(ds.classes))
        os.replace(tmp, cache_file)  # atomic: readers never see a half-written cache
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the cache {cache_file} ({e}); the next load will decode again. "
                      f"Set COOKBOOK_DATA to a writable folder.")
    return ds


def _stat_key(path: Path) -> str:
    """Size and modification time of an archive, or of everything in a folder."""
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"
    size, mtime = 0, path.stat().st_mtime_ns
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.stat(os.path.join(root, name))
            size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return f"{size}-{mtime}"


def _cache_file(path: Path, stat_key: str, image_size: int | None) -> Path:
    key = f"{_CACHE_VERSION}|{path}|{stat_key}|{image_size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "folders" / f"{path.name}-{digest}.npz"


def _entries(path: Path):
    """Yield (relative path parts, source) for the folders and image files in a folder or archive.

    source is None for a folder, else the file's path (str) or its bytes.
    """
    def wanted(name):
        return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)

    if path.is_dir():
        for root, dirs, files in os.walk(path):
            rel = Path(root).relative_to(path).parts
            for name in dirs:
                yield rel + (name,), None
            for name in filter(wanted, files):
                yield rel + (name,), os.path.join(root, name)
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("", ".", "/"))
                if member.isdir():
                    yield parts, None
                elif member.isfile() and parts and wanted(parts[-1]):
                    yield parts, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as e:
        raise DataError(f"cannot read the archive {path} ({type(e).__name__}: {e}); is it a complete tar file?") from e


def _decode_tree(path: Path, image_size: int | None) -> tuple[Dataset, bool]:
    """Decode every image under ``path``; returns the Dataset and whether images were resized."""
    layout = "expected train/<class>/<image> and test/<class>/<image> (or val/ instead of test/)"
    found: dict[str, dict[str, list]] = {}  # split -> class -> [(file name, image uint8 (H, W, 3))]
    for parts, source in _entries(path):
        if len(parts) > 1 and parts[0] not in ("train", "test", "val") and parts[1] in ("train", "test", "val"):
            parts = parts[1:]  # one top-level folder wrapping train/ and test/
        if not parts or parts[0] not in ("train", "test", "val") or len(parts) > 3:
            continue
        classes = found.setdefault(parts[0], {})
        if len(parts) == 2 and source is None:
            classes.setdefault(parts[1], [])
        elif len(parts) == 3 and source is not None:
            name = "/".join(parts)
            classes.setdefault(parts[1], []).append((name, _decode(source, f"{name} in {path}")))

    if "train" not in found:
        raise DataError(f"{path} has no train/ folder; {layout}")
    if "test" not in found and "val" not in found:
        raise DataError(f"{path} has no test/ (or val/) folder; {layout}")
    test_split = "test" if "test" in found else "val"
    for split in ("train", test_split):
        if not found[split]:
            raise DataError(f"{path}: {split}/ has no class folders; {layout}")
        for cls, images in found[split].items():
            if not images:
                raise DataError(f"{path}: class folder {split}/{cls}/ has no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    classes = sorted(found["train"])
    if classes != sorted(found[test_split]):
        only_train = sorted(set(found["train"]) - set(found[test_split]))
        only_test = sorted(set(found[test_split]) - set(found["train"]))
        raise DataError(f"{path}: train/ and {test_split}/ have different classes: only in train/: {only_train}, "
                        f"only in {test_split}/: {only_test}; give both splits the same class folders")

    items = {split: sorted(((c, name, image) for c, cls in enumerate(classes) for name, image in found[s][cls]),
                           key=lambda item: item[:2])
             for split, s in (("train", "train"), ("test", test_split))}
    first_name, first = items["train"][0][1], items["train"][0][2]
    odd = next(((n, im) for split in items for _, n, im in items[split] if im.shape != first.shape), None)
    if odd is not None and image_size is None:
        raise DataError(f"{path}: images differ in size: {first_name} is {first.shape[1]}x{first.shape[0]} but "
                        f"{odd[0]} is {odd[1].shape[1]}x{odd[1].shape[0]} (width x height); "
                        f"pass image_size= to resize them all")

    def stack(split):
        y = torch.tensor([c for c, _, _ in items[split]], dtype=torch.int64)
        if odd is None:
            return torch.from_numpy(np.stack([im for _, _, im in items[split]])).permute(0, 3, 1, 2).contiguous(), y
        x = [resize(torch.from_numpy(im).permute(2, 0, 1)[None], image_size) for _, _, im in items[split]]
        return torch.cat(x), y

    train_x, train_y = stack("train")
    test_x, test_y = stack("test")
    return Dataset(f"folder:{path}", train_x, train_y, test_x, test_y, classes), odd is not None


# ---------------------------------------------------------------- cifar10

def _load_cifar10() -> Dataset:
    import torchvision  # imported here: it is slow to import and only this loader needs it

    root = cache_dir() / "cifar10"
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as e:
        raise DataError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}). To work offline, use "
            f"load('shapes'), or load('folder:PATH') with a local copy laid out as train/<class>/<image> and "
            f"test/<class>/<image> (a folder or .tar/.tar.gz/.tar.xz archive), or put cifar-10-python.tar.gz "
            f"in {root}") from e

    def tensors(ds):
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    return Dataset("cifar10", *tensors(train), *tensors(test), classes=list(train.classes))
