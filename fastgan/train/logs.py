"""Run logs: ``metrics.jsonl`` (one JSON object per log point), ``events.jsonl`` (failure-watch reports),
the loss / gradient-norm plot ``losses.png`` and the sample images.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .._io import atomic_write, json_safe
from ..demo import save_grid


class JsonlLog:
    """Append-only JSON-lines file; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: str, resume_step: Optional[int] = None):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is None:
            open(path, "w").close()
        elif os.path.exists(path):
            kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= resume_step]
            atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")


def read_jsonl(path: str) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
    return rows


def _num(v):
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def plot_metrics(metrics_path: str, out_path: str) -> Optional[str]:
    """Losses, gradient norms, D's outputs and the sample-quality proxies against the step, as one PNG."""
    rows = read_jsonl(metrics_path)
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in rows]

    def series(key):
        return [_num(r.get(key)) for r in rows]

    panels = [("losses", [("loss_d", "D loss"), ("loss_g", "G loss"), ("penalty", "penalty")], False),
              ("gradient norms", [("grad_d", "D"), ("grad_g", "G")], True),
              ("D outputs", [("d_real", "D(x)"), ("d_fake", "D(G(z))"), ("d_acc", "D accuracy")], False),
              ("sample quality", [("diversity", "diversity (fake/real)"), ("modes_frac", "modes covered (frac)"),
                                  ("high_quality", "high-quality frac")], False)]
    # Periodic evaluation (run.eval_every): every numeric eval_* metric, plotted where it was measured.
    eval_keys = sorted({k for r in rows for k, v in r.items() if k.startswith("eval_") and not k.endswith("_total")
                        and k != "eval_num_samples" and isinstance(v, (int, float))})
    panels.append(("evaluation", [(k, k[len("eval_"):]) for k in eval_keys], False))
    panels = [(t, [(k, lab) for k, lab in keys if any(k in r for r in rows)], log) for t, keys, log in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys, logy) in zip(axes[:, 0], panels):
        for key, label in keys:
            ax.plot(steps, series(key), label=label, linewidth=1.2, marker="o" if title == "evaluation" else None,
                    markersize=3)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return out_path


def save_toy_samples(points: torch.Tensor, path_png: str, path_npy: Optional[str] = None, centers=None,
                     real: Optional[torch.Tensor] = None, title: str = "") -> None:
    """A scatter PNG of 2D points (over the real data and the mixture centres) and, optionally, the .npy."""
    import numpy as np

    pts = points.detach().float().cpu().numpy()
    if path_npy:
        atomic_write(path_npy, lambda f: np.save(f, pts))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    if real is not None:
        r = real.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="tab:blue", alpha=0.25, label="data")
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:orange", alpha=0.6, label="G(z)")
    if centers is not None:
        c = centers.detach().cpu().numpy() if torch.is_tensor(centers) else np.asarray(centers)
        ax.scatter(c[:, 0], c[:, 1], s=40, marker="x", c="k", label="modes")
        lim = float(np.abs(c).max()) * 1.5 + 0.5
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", markerscale=3)
    fig.tight_layout()
    atomic_write(path_png, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


__all__ = ["JsonlLog", "read_jsonl", "plot_metrics", "save_toy_samples", "save_grid"]
