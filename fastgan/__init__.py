"""fastgan: fused CUDA and Triton kernels for the hot paths of GAN training."""
from __future__ import annotations

__version__ = "0.1.0"

from . import nn, ops, reference  # noqa: E402
from . import penalties  # noqa: E402
from ._backend import BackendUnavailableError  # noqa: E402
from ._info import info  # noqa: E402
from .nn.convert import convert  # noqa: E402

__all__ = ["nn", "ops", "reference", "convert", "info", "BackendUnavailableError", "__version__"]
