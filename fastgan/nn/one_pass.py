"""One discriminator pass over real and fake images with "separate batches" semantics.

The GAN trick "construct different mini-batches for real and fake" (each
batch-norm layer normalises real images with real statistics and fake ones
with fake statistics) usually costs two discriminator passes.  Inside
``separate_batches(d, 2)`` every fastgan batch-norm layer of ``d`` takes its
input batch as 2 equal parts of consecutive samples and normalises each with
its own statistics, in the same fused kernels as one batch
(``batch_norm_act(..., segments=2)``), so one pass over
``torch.cat([real, fake])`` computes what the two passes would -- with half
the convolution launches, and larger, better-filled convolutions::

    with fastgan.nn.separate_batches(d, 2):
        logits = d(torch.cat([real, fake]))
    real_logits, fake_logits = logits.chunk(2)

Running statistics are updated once per part, in order, as the two passes
would.  Layers that mix the samples of a batch in any other way would mix the
parts silently, so the context refuses a module holding one (``nn.BatchNorm*``,
sync batch norm, pixel-shuffle batch norm, minibatch discrimination /
standard deviation, instance norm tracking running statistics in training),
a batch-norm layer with ``momentum=None`` (its cumulative average needs a
factor per part), and spectral normalisation
(whose power iteration would advance once instead of once per pass):
``unsupported_reason`` says why, for a caller that falls back to separate
passes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.spectral_norm import SpectralNorm  # (the older, hook-based form)

from .batch_norm_act import _BatchNormAct
from .minibatch import MinibatchDiscrimination, MinibatchStdDev
from .pixel_shuffle import PixelShuffleUpsample
from .sync_batch_norm_act import SyncBatchNormAct

__all__ = ["separate_batches", "unsupported_reason"]


def _has_spectral_norm(m: nn.Module) -> bool:
    params = m._modules.get("parametrizations")  # (a getattr miss costs an exception per module)
    if params is not None and any(type(p).__name__ == "_SpectralNorm" for plist in params.values() for p in plist):
        return True
    return bool(m._forward_pre_hooks) and any(isinstance(h, SpectralNorm) for h in m._forward_pre_hooks.values())


def _why_not(m: nn.Module) -> Optional[str]:
    """Why one pass of ``m`` itself over several parts of a batch would mix them, or None."""
    if isinstance(m, SyncBatchNormAct):
        return "synchronises batch statistics across processes (no per-part statistics)"
    if isinstance(m, PixelShuffleUpsample) and m.norm is not None:
        return "takes batch statistics after its pixel shuffle (no per-part statistics)"
    if isinstance(m, _BatchNorm):
        return "is not a fastgan batch-norm layer: its statistics would mix the parts"
    if isinstance(m, (MinibatchDiscrimination, MinibatchStdDev)):
        return "compares the samples of a batch: it would mix the parts"
    if m.training and m.__dict__.get("track_running_stats") and not isinstance(m, _BatchNormAct):
        # (instance norm: its running statistics average over the whole batch, once per pass)
        return "updates running statistics from the whole batch: once from both parts, not once per part"
    if isinstance(m, _BatchNormAct) and m.training and m.track_running_stats and m.momentum is None:
        return "has momentum=None (a cumulative average, one factor per part)"
    if _has_spectral_norm(m):
        return "is spectrally normalised: its power iteration would advance once, not once per part"
    return None


def _scan(module: nn.Module) -> tuple[Optional[str], list]:
    """(why one pass of ``module`` over several parts would not equal a pass per part, or None; its
    fastgan batch-norm layers).  One walk: this runs on every entry of ``separate_batches``."""
    layers = []
    for name, m in module.named_modules():
        why = _why_not(m)
        if why is not None:
            return f"{name or 'the module'} ({type(m).__name__}) {why}", layers
        if isinstance(m, _BatchNormAct):
            layers.append(m)
    return None, layers


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why one pass of ``module`` over several parts of a batch would not equal a pass per part, or None."""
    return _scan(module)[0]


@contextlib.contextmanager
def separate_batches(module: nn.Module, parts: int = 2) -> Iterator[nn.Module]:
    """Within the block, ``module``'s fastgan batch-norm layers normalise each of ``parts`` equal parts
    of consecutive samples of their input batch with its own statistics (see the module docstring).
    Raises ValueError, naming the layer, for a module a single pass cannot serve this way."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")
    reason, layers = _scan(module)
    if reason is not None and parts > 1:
        raise ValueError(f"separate_batches: {reason}; run the parts through the module separately")
    previous = [m.segments for m in layers]
    for m in layers:
        m.__dict__["segments"] = parts  # (a plain attribute: nn.Module.__setattr__'s checks cost µs each)
    try:
        yield module
    finally:
        for m, before in zip(layers, previous):
            m.__dict__["segments"] = before
