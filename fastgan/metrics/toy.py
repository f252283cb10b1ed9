"""Mode coverage on the 2D toy mixtures, by the protocol of VEEGAN (Srivastava et al. 2017) and
PacGAN (Lin et al. 2018).

Draw 2,500 samples from the generator.  A sample is *high quality* when it
lies within 3 standard deviations of its nearest mode centre.  A mode is
*covered* when it is the nearest mode of at least one high-quality sample.
The *reverse KL* is ``KL(q || p) = sum_k q_k log(q_k / p_k)`` between the
histogram q of the high-quality samples over the modes and the data's mode
weights p (uniform for ``ring8`` / ``grid25``); it is 0 for a perfectly
balanced generator and log(K) when everything falls on one mode.  With no
high-quality sample at all it is reported as ``inf``.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Union

import torch

from ..data.toy import GaussianMixture2D, toy_mixture

#: the number of samples of the VEEGAN / PacGAN protocol
TOY_PROTOCOL_SAMPLES = 2500
HIGH_QUALITY_STDS = 3.0


def _mixture(mixture: Union[str, GaussianMixture2D]) -> GaussianMixture2D:
    return toy_mixture(mixture) if isinstance(mixture, str) else mixture


def toy_mode_metrics(points: torch.Tensor, mixture: Union[str, GaussianMixture2D] = "grid25",
                     threshold: float = HIGH_QUALITY_STDS) -> dict:
    """Modes covered, high-quality fraction and reverse KL of generated 2D ``points`` (N, 2).

    Returns ``modes_covered``, ``modes_total``, ``high_quality`` (fraction in
    [0, 1]), ``reverse_kl`` (nats), ``num_samples`` and ``mode_histogram``
    (high-quality samples per mode).
    """
    mix = _mixture(mixture)
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) tensor, got "
                         f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    if points.shape[0] == 0:
        raise ValueError("no points to evaluate")
    pts = points.detach().float().cpu()
    finite = torch.isfinite(pts).all(1)
    idx, dist = mix.nearest_mode(torch.where(finite[:, None], pts, torch.zeros_like(pts)))
    good = finite & (dist <= threshold)
    hist = torch.bincount(idx[good], minlength=mix.num_modes).double()
    n_good = int(good.sum())
    if n_good:
        q = hist / n_good
        p = torch.full_like(q, 1.0 / mix.num_modes)
        nz = q > 0
        reverse_kl = float((q[nz] * (q[nz] / p[nz]).log()).sum())
    else:
        reverse_kl = math.inf
    return dict(modes_covered=int((hist > 0).sum()), modes_total=mix.num_modes,
                high_quality=n_good / pts.shape[0], reverse_kl=reverse_kl, num_samples=int(pts.shape[0]),
                mode_histogram=[int(v) for v in hist.tolist()])


def plot_toy_samples(points: torch.Tensor, mixture: Union[str, GaussianMixture2D], path: str,
                     title: Optional[str] = None, threshold: float = HIGH_QUALITY_STDS,
                     real: Optional[torch.Tensor] = None) -> str:
    """Scatter ``points`` over the mixture's modes (circles of ``threshold`` std) into a PNG at ``path``.

    High-quality samples are drawn in blue, the rest in grey; ``real``
    (optional) adds data samples in light green underneath.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    mix = _mixture(mixture)
    pts = points.detach().float().cpu().reshape(-1, 2)
    pts = pts[torch.isfinite(pts).all(1)]
    good = mix.nearest_mode(pts)[1] <= threshold if pts.shape[0] else torch.zeros(0, dtype=torch.bool)
    centers = mix.centers.numpy()
    span = float(mix.centers.abs().max()) + 10 * float(mix.stds.max()) + 0.5
    if pts.shape[0]:  # show strays too, within reason
        span = min(max(span, float(pts.abs().quantile(0.99)) * 1.05), 3 * span)
    fig = Figure(figsize=(5, 5), dpi=120)  # the Agg canvas directly: no pyplot, no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if real is not None:
        r = real.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="#9bd49b", alpha=0.5, linewidths=0, label="data")
    bad, ok = pts[~good].numpy(), pts[good].numpy()
    ax.scatter(bad[:, 0], bad[:, 1], s=3, c="0.6", alpha=0.6, linewidths=0, label=f"other ({bad.shape[0]})")
    ax.scatter(ok[:, 0], ok[:, 1], s=3, c="tab:blue", alpha=0.7, linewidths=0,
               label=f"within {threshold:g} std ({ok.shape[0]})")
    for (cx, cy), s in zip(centers, mix.stds.tolist()):
        ax.add_patch(Circle((cx, cy), threshold * s, fill=False, color="tab:red", lw=0.8))
    ax.scatter(centers[:, 0], centers[:, 1], marker="x", s=25, c="tab:red", linewidths=1, label="modes")
    head = title or mix.name
    if points.shape[0]:
        m = toy_mode_metrics(points, mix, threshold)
        head += (f"\n{m['modes_covered']}/{m['modes_total']} modes, {100 * m['high_quality']:.1f}% high quality, "
                 f"reverse KL {m['reverse_kl']:.3f}")
    ax.set_title(head, fontsize=9)
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=4, fontsize=6, markerscale=2, frameon=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
