"""Dropout in the generator (ganhacks #17; Isola et al. 2017, pix2pix: dropout in the decoder's layers).

:func:`add_dropout` inserts ``nn.Dropout(p)`` after every hidden norm + activation of a generator whose
layers sit in one ``nn.Sequential`` (the DCGAN and MLP generators' ``main``).  The activation's slot (a
parameterless ``nn.ReLU`` / ``nn.LeakyReLU``, or the ``nn.Identity`` that follows a fused norm+act layer)
becomes ``nn.Sequential(slot, nn.Dropout(p))``, which has no parameters either: the state_dict keys stay
those of the model without dropout, so weights load either way.  A fused ``PixelShuffleUpsample`` block
(norm and activation inside) has no separate slot; it is wrapped the same way, which shifts its keys
under ``.0.`` (the generator's config records the dropout, so a checkpoint rebuilds the same layout).

Dropout is active in ``train()`` mode only; the trainer samples in ``eval()`` mode.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..nn import PixelShuffleUpsample

_SLOTS = (nn.ReLU, nn.LeakyReLU, nn.Identity)


def add_dropout(main: nn.Sequential, p: float) -> nn.Sequential:
    """Insert dropout with probability ``p`` after each hidden activation of ``main`` (in place; returned)."""
    if not isinstance(main, nn.Sequential):
        raise TypeError(f"main must be an nn.Sequential of the generator's layers, got {type(main).__name__}")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if p == 0:
        return main
    for i, m in enumerate(list(main)):
        # A pixel-shuffle block with activation "identity" is an output layer; everything else in _SLOTS
        # ends a hidden layer of the DCGAN / MLP generators.
        hidden = isinstance(m, _SLOTS) or (isinstance(m, PixelShuffleUpsample) and m.activation != "identity")
        if hidden:
            main[i] = nn.Sequential(m, nn.Dropout(p))
    return main


def dropout_modules(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


class SamplingDropout(nn.Dropout):
    """Dropout that stays on in ``eval()`` mode too: ganhacks #17's noise "at both training and test time"."""

    def forward(self, x):
        return F.dropout(x, self.p, training=True, inplace=self.inplace)


def keep_dropout_when_sampling(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` of ``model`` for :class:`SamplingDropout` (same p; no parameters, so the
    state_dict is unchanged); returns the model."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, SamplingDropout(child.p, child.inplace))
    return model
