"""The mode-collapse probe behind ``monitor.class_histogram``: classify fixed-z samples at each log point.

With a classifier for the data set (``fastgan.metrics``' small CNN for the
digits and Fashion-MNIST), the class histogram of G's samples shows a
collapse that pixel diversity can miss (many different-looking 1s).  Each
log point gets ``gen_classes`` (classes holding at least ``min_share`` of
their fair share n / K of the samples), ``gen_classes_frac`` (that over K),
``gen_class_kl`` (KL(histogram || uniform), nats) and ``gen_class_top``
(the largest class's share); the failure watch warns (``class_collapse``)
when ``gen_classes_frac`` stays below ``monitor.class_floor``.  The batch
diversity ratio (fake / real mean pairwise distance) is the trainer's
``diversity`` column, computed for every run.
"""
from __future__ import annotations

from typing import Callable

import torch


def class_histogram_stats(logits: torch.Tensor, min_share: float = 0.2) -> dict:
    """The numbers above from classifier logits (N, K)."""
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (N >= 1, K), got {tuple(logits.shape)}")
    n, k = logits.shape
    hist = torch.bincount(logits.argmax(1).cpu(), minlength=k).double()
    p = hist / n
    covered = int((hist >= max(1.0, min_share * n / k)).sum())
    nz = p > 0
    kl = float((p[nz] * (p[nz] * k).log()).sum())
    return {"gen_classes": covered, "gen_classes_frac": covered / k, "gen_class_kl": kl,
            "gen_class_top": float(p.max())}


class ClassHistogramProbe:
    """``probe(generate)`` -> the stats of ``classifier(generate(z))`` for a fixed ``z``.

    ``classifier`` maps images in [-1, 1] to logits (N, K); ``generate(z, labels)`` returns samples in the
    data range (the trainer's sampling G, in eval mode, under a frozen RNG).
    """

    def __init__(self, classifier: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, labels=None,
                 min_share: float = 0.2):
        self.classifier, self.z, self.labels, self.min_share = classifier, z, labels, min_share

    @torch.no_grad()
    def __call__(self, generate: Callable) -> dict:
        x = generate(self.z, self.labels)
        return class_histogram_stats(self.classifier(x).float(), self.min_share)


def metrics_classifier(dataset: str, device, log: Callable[[str], None] = print):
    """fastgan.metrics' cached classifier for ``dataset`` as a logits function (trained once, ~40 s, when
    not cached); raises ``MetricsUnavailableError`` when the data set has none."""
    from ..metrics import classifier_outputs, load_classifier

    model, _info = load_classifier(dataset, device=device, log=log)
    return lambda x: classifier_outputs(model, x.float())[1]
