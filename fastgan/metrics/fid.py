"""FID and KID on feature sets, and reference features cached per data set.

KID (and the classifier's Inception-score-style score) use torchmetrics'
classes, fed with features we extract ourselves through a pass-through
"feature network", so the same code serves Inception pool features and the
small classifier's features.  FID is computed here in closed form because
torchmetrics' general eigendecomposition of S_r S_g costs 20-80 s per call
for 2048-d features on two CPU cores; ``method="torchmetrics"`` runs
torchmetrics' ``FrechetInceptionDistance`` instead, and the tests check the two
agree.

* FID (Heusel et al. 2017): ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``
  of the Gaussians fitted to the two feature sets (float64).
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
  kernel ``(x.y / d + 1)^3``, mean and std over ``subsets`` random subsets
  of ``subset_size`` (capped at the smaller set).

Reference features of a data set are computed once and cached as
``<cache>/fid/<dataset>-<size>px-<n>-<network>.pt`` (see
:func:`fastgan.metrics.cache_dir`): the (n, 2048) float32 features, so FID
and KID both reuse them.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from . import MetricsUnavailableError, atomic_torch_save, cache_dir

TORCHMETRICS_INSTALL = "pip install torchmetrics"


def _torchmetrics_image():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as exc:
        raise MetricsUnavailableError(f"FID/KID need torchmetrics: {TORCHMETRICS_INSTALL} ({exc})") from None
    return FrechetInceptionDistance, KernelInceptionDistance


class PassThroughFeatures(nn.Module):
    """The "feature network" handed to torchmetrics when the features are already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check_features(name: str, f: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(f, torch.Tensor) or not f.is_floating_point() or f.dim() != 2:
        raise ValueError(f"{name} must be a floating-point (N, D) tensor, got "
                         f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    if f.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return f.detach()


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = _check_features("features", features).double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2.

    S1 S2 has the eigenvalues of the symmetric L^T S2 L where S1 = L L^T
    (Cholesky), so one symmetric eigenvalue solve replaces torchmetrics'
    general one (several times faster); a singular S1 falls back to its
    eigendecomposition square root.
    """
    chol, info = torch.linalg.cholesky_ex(s1)
    root = chol if int(info) == 0 else _sqrtm_psd(s1)
    m = root.T @ s2 @ root
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians (float64)."""
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    sigma1, sigma2 = torch.as_tensor(sigma1).double(), torch.as_tensor(sigma2).double()
    if mu1.shape != mu2.shape or mu1.dim() != 1 or sigma1.shape != (mu1.numel(),) * 2 or sigma2.shape != sigma1.shape:
        raise ValueError(f"shapes do not match: mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}")
    sigma2 = sigma2.to(sigma1.device)
    cross = _trace_sqrt_product(sigma1, sigma2)
    return float((mu1 - mu2.to(mu1.device)).square().sum().cpu() + (sigma1.trace() + sigma2.trace()
                 - 2 * cross).cpu())


def fid_from_features(real: torch.Tensor, fake: torch.Tensor, method: str = "auto") -> float:
    """FID between two (N, D) feature sets (unbiased covariances, float64).

    ``method="torchmetrics"`` runs torchmetrics' ``FrechetInceptionDistance``
    (a general eigendecomposition of S1 S2: 20-80 s for D = 2048 on two CPU
    cores).  ``"auto"`` computes the same number faster and exactly: with
    fewer samples than dimensions, ``Tr((S1 S2)^(1/2))`` is the nuclear norm
    of ``A1 A2^T / sqrt((n1-1)(n2-1))`` (A: centred features), an n1 x n2
    SVD; otherwise two symmetric eigendecompositions.  The tests check both
    against each other and against the closed form.
    """
    real = _check_features("real features", real)
    fake = _check_features("fake features", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if method not in ("auto", "torchmetrics"):
        raise ValueError(f"method must be 'auto' or 'torchmetrics', got {method!r}")
    if method == "torchmetrics":
        FID, _ = _torchmetrics_image()
        metric = FID(feature=PassThroughFeatures(real.shape[1]), reset_real_features=False)
        for chunk in real.split(4096):
            metric.update(chunk.double().cpu(), real=True)
        for chunk in fake.split(4096):
            metric.update(chunk.double().cpu(), real=False)
        return float(metric.compute())
    device = real.device
    a = real.double()
    b = fake.to(device).double()
    mu1, mu2 = a.mean(0), b.mean(0)
    a, b = a - mu1, b - mu2
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    tr1 = a.square().sum() / (n1 - 1)
    tr2 = b.square().sum() / (n2 - 1)
    if min(n1, n2) < d:
        cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    else:
        cross = _trace_sqrt_product(a.T @ a / (n1 - 1), b.T @ b / (n2 - 1))
    return float((mu1 - mu2).square().sum() + tr1 + tr2 - 2 * cross)


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets, by torchmetrics' ``KernelInceptionDistance``.

    ``subset_size`` is capped at the size of the smaller set; subsets are
    drawn with a fixed ``seed`` (the global RNG is left untouched).  When that
    cap takes both whole sets every subset is the same pair of sets, so their
    spread says nothing: the std is then NaN (not a misleading ~1e-16).
    """
    real = _check_features("real features", real)
    fake = _check_features("fake features", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    for name, value, least in (("subsets", subsets, 1), ("subset_size", subset_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")  # (subset_size 1: NaN)
    _, KID = _torchmetrics_image()
    import warnings

    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer": we know
        warnings.simplefilter("ignore", UserWarning)
        metric = KID(feature=PassThroughFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    if size == real.shape[0] == fake.shape[0]:
        return float(mean), float("nan")  # (every subset was both whole sets)
    return float(mean), float(std)


# ----------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------

ImageSource = Union[torch.Tensor, Iterable[torch.Tensor], Callable[[int], torch.Tensor]]


@torch.inference_mode()
def extract_features(network: nn.Module, images: ImageSource, n: Optional[int] = None, batch_size: int = 50,
                     device=None, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Run ``network`` over images and return (N, D) float32 features on the CPU.

    ``images``: a tensor (N, C, H, W) in [-1, 1]; an iterable of such
    batches; or a function ``f(batch) -> images`` (e.g. a generator sampler)
    called until ``n`` images are done.
    """
    from tqdm.auto import tqdm

    if device is None:
        device = next(iter(network.parameters()), torch.empty(0)).device
    device = torch.device(device)
    if isinstance(images, torch.Tensor):
        total = images.shape[0] if n is None else min(n, images.shape[0])
        batches = (images[i:i + batch_size] for i in range(0, total, batch_size))
    elif callable(images):
        if n is None:
            raise ValueError("n is required when images is a sampling function")
        total = n
        batches = (images(min(batch_size, n - i)) for i in range(0, n, batch_size))
    else:
        total = n
        batches = iter(images)
    out, done = [], 0
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for batch in batches:
        if n is not None and done >= n:
            break
        if n is not None:
            batch = batch[: n - done]
        feats = network(batch.to(device))
        out.append(feats.float().cpu())
        done += batch.shape[0]
        bar.update(batch.shape[0])
    bar.close()
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)


def _network_name(network: nn.Module) -> str:
    return getattr(network, "name", type(network).__name__)


def reference_path(dataset: str, image_size: int, n: int, network_name: str, directory: Optional[str] = None,
                   fingerprint: str = "") -> str:
    directory = cache_dir("fid") if directory is None else directory
    key = f"{dataset}-{image_size}px-{n}-{network_name}" + (f"-{fingerprint}" if fingerprint else "")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return os.path.join(directory, safe + ".pt")


def reference_fingerprint(data, indices: torch.Tensor, root=None) -> str:
    """What tells one set of reference images from another of the same name, size and count: the images'
    bytes for an in-memory set (Fashion-MNIST from any root), else their files' paths, sizes and modification
    times (an image folder), else the data's root -- with the channels, which an image folder takes as asked."""
    h = hashlib.sha1(f"{getattr(data, 'channels', '')}|{getattr(data, 'image_size', '')}|".encode())
    samples = getattr(getattr(data, "base", None), "samples", None)
    if hasattr(data, "images"):
        h.update(data.images[indices].contiguous().numpy().tobytes())
    elif samples is not None:
        for i in indices.tolist():
            path = os.path.abspath(samples[i][0])
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    elif root is not None:
        h.update(os.path.abspath(os.fspath(root)).encode())
    return h.hexdigest()[:16]


def reference_features(dataset: str, network: nn.Module, n: int = 5000, image_size: int = 32, root=None,
                       batch_size: int = 50, device=None, directory: Optional[str] = None, refresh: bool = False,
                       progress: bool = True, log: Callable[[str], None] = print) -> torch.Tensor:
    """(n', D) features of n' = min(n, len) training images of ``dataset``, cached.

    The images are those the GAN trains on (``fastgan.data.load_dataset(dataset, root, image_size)``);
    below the whole set, a fixed random subset of them (``fastgan.data.sample_indices``: data stored
    sorted by class would otherwise give a reference of a few classes).  The cache file
    (:func:`reference_path`) is keyed by data set, image size, count, network name and
    :func:`reference_fingerprint` (so another folder or root of the same name is not served another's
    features); a file that does not load or does not match is recomputed.
    """
    from ..data import load_dataset, sample_indices

    data = load_dataset(dataset, root=root, image_size=image_size)
    if not hasattr(data, "channels"):
        raise ValueError(f"dataset {dataset!r} is not an image data set; FID/KID need images")
    count = min(int(n), len(data))
    if count < 2:
        raise ValueError(f"need at least 2 reference images, got n={n} (data set has {len(data)})")
    indices = sample_indices(len(data), count)
    name = _network_name(network)
    fingerprint = reference_fingerprint(data, indices, root)
    path = reference_path(dataset, image_size, count, name, directory, fingerprint)
    if not refresh and os.path.isfile(path):
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            feats = cached["features"]
            if (cached.get("network") == name and cached.get("fingerprint") == fingerprint
                    and feats.shape[0] == count and torch.isfinite(feats).all()):
                return feats
            log(f"fastgan eval: {path} does not match (network/images/count); recomputing")
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is recomputed
            log(f"fastgan eval: cannot read {path} ({exc}); recomputing")
    if hasattr(data, "images"):  # in-memory uint8: convert only what is used
        from ..data import to_unit_range

        source: ImageSource = to_unit_range(data.images[indices])
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, indices.tolist()), batch_size=batch_size,
                                             shuffle=False, num_workers=0)
        source = (batch for batch, _ in loader)
    log(f"fastgan eval: computing {name} reference features of {count} {dataset} images "
        f"(once; cached in {path})")
    feats = extract_features(network, source, n=count, batch_size=batch_size, device=device, progress=progress,
                             desc=f"{dataset} reference")
    atomic_torch_save({"features": feats.contiguous(), "network": name, "dataset": dataset,
                       "image_size": image_size, "count": count, "fingerprint": fingerprint}, path)
    return feats
