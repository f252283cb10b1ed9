"""Compare trainer options on the 2D toy mixtures (modes covered, high-quality %) and write a markdown table.

One command::

    python -m fastgan.experiments.toy_compare --out docs/toy_comparison.md

Each *variant* is a name and a list of ``--set`` style options applied on top of the data set's preset
(``toy-ring8`` / ``toy-grid25``); the built-in list is :data:`VARIANTS` and ``--variant NAME key=value ...``
(repeatable) replaces it, ``--add-variant`` extends it.  Every run trains for ``--steps`` generator steps
per seed, then measures 2500 samples from fixed latents the way the trainer's log does
(:func:`fastgan.train.trainer.toy_mode_stats`: a sample is high quality within 3 standard deviations of
its nearest centre; a mode is covered when it holds >= 20 % of its fair share of high-quality samples).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

#: name -> options (``key=value``) on top of the toy preset.  Other options are added by naming them here or
#: with --variant / --add-variant.
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "unrolled K=5": ["unrolled_steps=5"],
    "VAE-GAN": ["hybrid=vae_gan"],
    "KL + GAN": ["hybrid=kl_gan"],
    "MGAN K=4": ["num_generators=4"],
    "semi-supervised + FM": ["semi_supervised=true", "feature_matching=1", "feature_matching_only=true",
                             "labelled_per_class=10", "semi_holdout=1000"],
    "mode seeking 1": ["mode_seeking=1"],
    "G dropout 0.1": ["g_dropout=0.1"],
    "D pre-train 500": ["d_pretrain=500"],
    # Thresholds that bind on the toy sets (D's non-saturating loss is ~1.39 and G's ~0.69 at equilibrium; at the
    # defaults, 0.3, neither network ever rests here and the run equals the baseline).
    "loss balancing 1.3 / 0.7": ["balance=true", "balance_d_above=1.3", "balance_g_above=0.7"],
    "weight decay 1e-4": ["weight_decay_g=1e-4", "weight_decay_d=1e-4"],
}


def run_one(dataset: str, sets: list[str], steps: int, seed: int, workdir: str) -> dict:
    from ..train import Trainer, load_config

    out = os.path.join(workdir, f"{dataset}-{abs(hash(tuple(sets))) % 10 ** 8}-s{seed}")
    cfg = load_config(preset=f"toy-{dataset}", sets=[
        f"steps={steps}", f"seed={seed}", f"out={out}", f"log_every={steps}", "sample_every=0",
        "checkpoint_every=0", "progress=false", "plots=false", "threads=1", *sets])
    t0 = time.perf_counter()
    result = Trainer(cfg, log=lambda s: None).train()
    final = result["final"]
    return {"status": result["status"], "modes": final.get("modes"), "high_quality": final.get("high_quality"),
            "num_modes": 8 if dataset == "ring8" else 25, "seconds": time.perf_counter() - t0}


def _cell(values, fmt):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    per = ", ".join(fmt.format(v) for v in vals)
    if len(vals) == 1:
        return per
    return f"{fmt.format(statistics.mean(vals))} ({per})"


def table(rows: list[dict], steps: int, seeds: list[int], command: str) -> str:
    lines = [
        "# Toy comparison: modes covered and high-quality samples",
        "",
        f"Produced by `{command}` on {datetime.date.today().isoformat()} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, 1 CPU thread per run).",
        f"{steps} generator steps per run, seeds {', '.join(map(str, seeds))}; each variant is the data set's "
        "preset (`toy-ring8` / `toy-grid25`: MLP 3 x 128, batch 256, non-saturating loss, Adam 1e-3 / 0.5) plus "
        "the options shown.  Modes: covered modes of 2500 samples from fixed latents (>= 20 % of a fair share of "
        "samples within 3 sigma); high quality: the fraction within 3 sigma of a centre.  With several seeds a "
        "cell is the mean, then the per-seed values.",
        "",
        f"Total training time of the {sum(len(r['seconds']) for r in rows)} runs: "
        f"{sum(sum(r['seconds']) for r in rows) / 60:.1f} min.",
        "",
        "| data | variant | options | modes covered | high quality % | seconds / run |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        opts = " ".join(f"`{s}`" for s in r["sets"]) or "(preset)"
        status = "" if all(s == "done" for s in r["status"]) else f" ({', '.join(r['status'])})"
        lines.append(f"| {r['dataset']} | {r['variant']}{status} | {opts} | "
                     f"{_cell(r['modes'], '{:.0f}')} / {r['num_modes']} | "
                     f"{_cell([None if h is None else 100 * h for h in r['high_quality']], '{:.1f}')} | "
                     f"{statistics.mean(r['seconds']):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.experiments.toy_compare", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/toy_comparison.md", help="markdown file to write")
    p.add_argument("--datasets", nargs="+", default=["ring8", "grid25"], choices=["ring8", "grid25"])
    p.add_argument("--steps", type=int, default=1000, help="generator steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a variant: its name then --set options (repeatable; replaces the built-in list)")
    p.add_argument("--add-variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                   help="a variant added to the built-in list (repeatable)")
    p.add_argument("--only", nargs="+", help="run only these variants (by name)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="option applied to every run")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temporary directory)")
    a = p.parse_args(argv)
    variants = {v[0]: v[1:] for v in a.variant} if a.variant else dict(VARIANTS)
    for v in a.add_variant or []:
        variants[v[0]] = v[1:]
    if a.only:
        unknown = [n for n in a.only if n not in variants]
        if unknown:
            p.error(f"--only: unknown variants {unknown}; known: {list(variants)}")
        variants = {n: variants[n] for n in a.only}
    command = "python -m fastgan.experiments.toy_compare " + " ".join(
        f"'{x}'" if " " in x else x for x in (argv if argv is not None else sys.argv[1:]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="toy_compare_") as tmp:
        workdir = a.workdir or tmp
        for dataset in a.datasets:
            for name, sets in variants.items():
                row = {"dataset": dataset, "variant": name, "sets": sets, "modes": [], "high_quality": [],
                       "status": [], "seconds": [], "num_modes": 8 if dataset == "ring8" else 25}
                for seed in a.seeds:
                    res = run_one(dataset, sets + a.sets, a.steps, seed, workdir)
                    for k in ("modes", "high_quality", "status", "seconds"):
                        row[k].append(res[k])
                    print(f"{dataset} {name} seed {seed}: {res['modes']}/{res['num_modes']} modes, "
                          f"{100 * (res['high_quality'] or 0):.1f} % high quality, {res['seconds']:.0f}s "
                          f"({res['status']})", flush=True)
                    if res["status"] == "interrupted":  # the trainer turned SIGTERM / Ctrl-C into a clean stop
                        print("interrupted: stopping (the table keeps the variants finished so far)")
                        return 130
                rows.append(row)
                text = table(rows, a.steps, a.seeds, command)
                os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
                with open(a.out + ".tmp", "w") as f:  # rewritten after every variant: partial results survive
                    f.write(text)
                os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
