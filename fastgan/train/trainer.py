"""The GAN trainer behind ``fastgan train``.

One *step* is ``n_critic`` discriminator updates followed by one generator
update.  Everything random draws from torch's global generator (whose state,
with numpy's and python's, goes into every checkpoint) or from generators
seeded by ``run.seed``; the data order is a function of (seed, epoch); sample
grids and evaluations run on fixed latents under ``torch.random.fork_rng``.
So ``2N`` steps in one go and ``N`` steps + ``--resume`` + ``N`` steps give
bit-identical weights on the CPU.  (Instance noise with ``instance_noise_decay=0``
decays over the run's length when it started, kept on resume: a run extended by
``--resume --steps`` does not bring the noise back.  Set the decay explicitly
to extend a run exactly as if it had been started longer.)

The D update (per critic step)::

    real (+ labels) from the stream; z ~ p(z) (+ random labels)
    fake = G(z)                        (an old G snapshot with probability swap_prob)
    fake <- replay.mix(fake)           (experience replay)
    add instance noise to real and fake; pack them (PacGAN)
    D on real and fake, separately or as one batch; targets from label smoothing / flips
    loss = D loss (+ AC-GAN class loss) (+ gradient penalty) (+ historical averaging)
    skip the update if the loss or the gradient is not finite; else step (+ weight clipping)

The G update::

    fake = G(z) (the last critic step's, reused)   D' = D or an old D snapshot
    loss = G loss on D'(noise(pack(fake))) (+ feature matching) (+ AC-GAN class loss) (+ historical averaging)
    step; EMA update
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import _backend
from .._device import resolve_device
from .._io import plural
from ..models import has_vbn
from ..nn import separate_batches, virtual_batch_reference
from ..nn.one_pass import unsupported_reason
from . import algos
from . import losses as L
from .checkpoint import (CheckpointError, capture_rng, find_resume_checkpoint, last_path, load_resume_checkpoint,
                         periodic_checkpoints, restore_rng, save_checkpoint)
from .config import ConfigError, TrainConfig, validate
from .config_checks import check_against_data
from .faults import BufferGuard, is_out_of_memory, out_of_memory_message, save_after_fault
from .logs import JsonlLog, plot_metrics, save_grid, save_toy_samples
from .models import build_discriminator, build_generator, model_specs
from .monitor import FailureMonitor, TrainingDiverged
from .distributed import Distributed, NullLog
from .g_extras import g_extra_losses
from .graph_step import CapturedStep
from .optim import build_optimizer, skips_on_device, step_unless_nonfinite
from .schedules import StepSchedule
from .tricks import (EMA, HistoricalAverage, ReplayBuffer, SnapshotPool, add_instance_noise, d_targets,
                     instance_noise_std, pack, sample_labels, sample_z, slerp_grid)


class Interrupted(Exception):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _grad_norm(params) -> torch.Tensor:
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    if all(g.dtype == torch.float32 for g in grads):
        # one multi-tensor launch per device on CUDA (torch's foreach norm) instead of one per parameter
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def read_stats(stats: dict) -> dict:
    """A step's statistics as Python numbers: the 0-d tensors read back in one transfer per (device,
    dtype) instead of one ``.item()`` (a host sync) each; other entries as they are."""
    groups: dict = {}
    for k, v in stats.items():
        if torch.is_tensor(v):
            groups.setdefault((v.device, v.dtype), []).append(k)
    out = dict(stats)
    for keys in groups.values():
        values = torch.stack([stats[k].detach().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values))
    return out


def _all_finite(module_or_tensors) -> bool:
    tensors = (list(module_or_tensors.parameters()) + list(module_or_tensors.buffers())
               if isinstance(module_or_tensors, torch.nn.Module) else module_or_tensors)
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _pairwise_mean(x: torch.Tensor, limit: int = 128) -> float:
    x = x.detach().flatten(1).float()[:limit]
    if x.shape[0] < 2:
        return float("nan")
    return torch.pdist(x).mean().item()


def toy_mode_stats(points: torch.Tensor, mixture, n_sigma: float = 3.0, min_share: float = 0.2) -> dict:
    """Modes covered and high-quality fraction of 2D samples (the VEEGAN / PacGAN protocol's quantities):
    a sample is high quality within ``n_sigma`` standard deviations of its nearest centre; a mode is covered
    when it holds at least ``min_share`` of its fair share (n / K) of high-quality samples."""
    idx, dist = mixture.nearest_mode(points.detach().float().cpu())
    good = dist <= n_sigma
    k = mixture.num_modes
    counts = torch.bincount(idx[good], minlength=k)
    need = max(1.0, min_share * points.shape[0] / k)
    covered = int((counts >= need).sum())
    return {"modes": covered, "modes_frac": covered / k, "high_quality": good.float().mean().item()}


def cudnn_benchmark(run, device: torch.device) -> Optional[bool]:
    """Whether cuDNN's autotuner runs: ``run.cudnn_benchmark``, with auto = on for a CUDA device unless
    the run is deterministic (the timed choice can differ between runs); None: leave torch's setting
    alone (auto off CUDA, where cuDNN does not run)."""
    if run.cudnn_benchmark != "auto":
        return run.cudnn_benchmark == "on"
    return (not run.deterministic) if device.type == "cuda" else None


class Trainer:
    """Build everything from a validated :class:`TrainConfig`; ``train()`` runs it.

    ``resume``: a checkpoint dict (from :func:`load_checkpoint`) to continue from.
    """

    def __init__(self, cfg: TrainConfig, *, resume: Optional[dict] = None, log: Callable[[str], None] = print):
        validate(cfg, resumed_from=None if resume is None else resume.get("config"))
        self.cfg, self.log = cfg, log
        r, m, t, lo, o = cfg.run, cfg.model, cfg.tricks, cfg.loss, cfg.optim
        self.device = resolve_device(r.device, "run.device")
        self.dist = Distributed.from_env(self.device)  # under torchrun: one process per device
        self.dist.check(cfg)
        self.device = self.dist.local_device(self.device)
        if r.cuda_graph and (self.device.type != "cuda" or self.dist.enabled):
            raise ConfigError([f"run.cuda_graph: needs one CUDA device per process and no torch.distributed (device "
                               f"{self.device}, {self.dist.world_size} process(es))"])
        self._check_impl(m.impl)
        if not self.dist.is_main:
            self.log = lambda *_: None  # rank 0 alone reports, writes samples, logs and checkpoints
        if r.threads:
            torch.set_num_threads(r.threads)
        if r.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        # A GAN trains on one image size, so timing cuDNN's convolution algorithms once per shape pays
        # off from the first steps (process-wide, as torch.backends flags are).
        tune = cudnn_benchmark(r, self.device)
        if tune is not None:
            torch.backends.cudnn.benchmark = tune
        seed_everything(r.seed)
        self.toy = cfg.is_toy()
        self._buffer_guard: Optional[BufferGuard] = None  # made by the first step
        self.out = r.out
        self.ckpt_dir = os.path.join(self.out, "checkpoints")
        self.sample_dir = os.path.join(self.out, "samples")

        # -- data ------------------------------------------------------------------------------
        from ..data import load_dataset

        d = cfg.data
        self.dataset = load_dataset(d.dataset, root=d.root, image_size=d.image_size, download=d.download,
                                    max_samples=d.max_samples, channels=d.channels, num_samples=d.toy_samples,
                                    seed=r.seed)
        data_errors = check_against_data(cfg, self.dataset)
        if data_errors:
            raise ConfigError(data_errors)
        if self.toy:
            self.data_info = {"kind": "toy", "dataset": d.dataset, "num_classes": self.dataset.num_classes,
                              "channels": None, "image_size": None}
            self.mixture = self.dataset.mixture
        else:
            self.data_info = {"kind": "image", "dataset": d.dataset, "num_classes": self.dataset.num_classes,
                              "channels": self.dataset.channels, "image_size": d.image_size}
            self.mixture = None
        self.semi = algos.SemiSupervised(self, self.dataset) if lo.semi_supervised else None  # issue 13
        if self.semi is not None:
            self.dataset = self.semi.train_dataset  # held-out examples never reach the stream
        self.stream = self.dist.data_stream(self.dataset, r.batch_size, r.seed, self.device, workers=d.workers)
        self.scale_to_unit = not self.toy and not d.scale_inputs
        # auto: NHWC on CPU (oneDNN's convolutions, about 2x) and on CUDA, where the first GPU run
        # (benchmarks/results/2026-11-30-h200.json, -cl rows) timed fastgan's DCGAN / WGAN-GP steps at
        # batch 128 4-5% faster in fp32 and up to 27% faster (WGAN-GP, bf16) channels-last
        cl = r.channels_last == "on" or (r.channels_last == "auto" and self.device.type in ("cpu", "cuda"))
        self.memory_format = torch.channels_last if (cl and not self.toy) else torch.contiguous_format

        # -- models ----------------------------------------------------------------------------
        self.spec = model_specs(cfg, self.data_info)
        saved_d = ((resume or {}).get("spec") or {}).get("discriminator") or {}
        if resume is not None and not saved_d.get("spectral_norm_heads"):
            # a checkpoint from before D's heads were spectrally normalised: its D, as it trained
            self.spec["discriminator"].pop("spectral_norm_heads", None)
        self.G = build_generator(self.spec["generator"]).to(self.device, memory_format=self.memory_format)
        self.D = build_discriminator(self.spec["discriminator"]).to(self.device, memory_format=self.memory_format)
        self.G, self.D = self.dist.sync_batch_norm(self.G), self.dist.sync_batch_norm(self.D)
        self.num_classes = self.spec["generator"]["num_classes"]
        self.conditional = self.spec["discriminator"]["conditional"]
        self.g_vbn, self.d_vbn = has_vbn(self.G), has_vbn(self.D)
        # torch.compile of G for the training forward passes (G is never differentiated twice: the penalties
        # take D's gradient at detached inputs); the eager module keeps the weights and does the sampling.
        self.G_train = torch.compile(self.dist.ddp(self.G)) if r.compile_g else self.dist.ddp(self.G)
        self.D_train = self.dist.ddp(self.D)  # D's training forwards (the penalty's too) go through DDP
        # tricks.separate_batches as one D pass over real and fake where D's layers allow it (its batch norms
        # then take per-half statistics: the two passes' math, half the D step's convolution launches)
        self.d_one_pass = t.separate_batches and unsupported_reason(self.D) is None
        self.opt_g = self._optimizer(self.G, o.optimizer_g, o.lr_g, 0.0, o.weight_decay_g)
        self.opt_d = self._optimizer(self.D, o.optimizer_d, o.lr_d, o.momentum_d, o.weight_decay_d)
        self.schedule = StepSchedule(o.d_pretrain, o.balance, o.balance_d_above, o.balance_g_above)
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[r.amp]
        self.scaler_d = torch.amp.GradScaler(self.device.type) if r.amp == "fp16" else None
        self.scaler_g = torch.amp.GradScaler(self.device.type) if r.amp == "fp16" else None

        # -- fixed tensors (seeded generators, independent of the global RNG) ------------------
        gen = torch.Generator().manual_seed(r.seed + 1)
        n_fixed = r.n_samples * (16 if self.toy else 1)
        self.fixed_z = sample_z(n_fixed, m.nz, m.z_dist, generator=gen).to(self.device)
        self.fixed_labels = (torch.arange(n_fixed) % self.num_classes).to(self.device) if self.num_classes else None
        self.vbn_z = self.vbn_labels = self.vbn_real = self.vbn_real_labels = None
        if self.g_vbn:
            gv = torch.Generator().manual_seed(r.seed + 2)
            self.vbn_z = sample_z(t.vbn_reference_size, m.nz, m.z_dist, generator=gv).to(self.device)
            if self.num_classes:
                self.vbn_labels = sample_labels(t.vbn_reference_size, self.num_classes, generator=gv).to(self.device)
        if self.d_vbn:
            size = t.vbn_reference_size - t.vbn_reference_size % t.pack or t.pack
            x, y = self.stream.fixed_batch(size, r.seed + 3)
            self.vbn_real, self.vbn_real_labels = self._prepare_real(x), y

        # -- tricks ----------------------------------------------------------------------------
        self.ema = EMA(self.G, t.ema, t.ema_start) if t.ema > 0 else None
        self.replay = ReplayBuffer(t.replay_size, t.replay_ratio) if t.replay_size else None
        self.g_pool = SnapshotPool(self.G, t.swap_every, t.swap_pool, t.swap_prob) if t.swap_prob > 0 else None
        self.d_pool = SnapshotPool(self.D, t.swap_every, t.swap_pool, t.swap_prob) if t.swap_prob > 0 else None
        self.hist_g = HistoricalAverage(self.G, lo.historical_averaging) if lo.historical_averaging > 0 else None
        self.hist_d = HistoricalAverage(self.D, lo.historical_averaging) if lo.historical_averaging > 0 else None
        # the instance noise's horizon: "the whole run" is the run's length when it started, kept in the
        # checkpoint (a --resume with more --steps must not bring the noise back)
        self.noise_decay_steps = t.instance_noise_decay or self.cfg.run.steps
        # a critic whose output depends on the class (the projection D), penalised at interpolates of real and
        # fake, needs each pair to share a class (AC-GAN's adversarial output does not read the labels)
        self._pairs_labels = self.conditional == "embedding" and lo.penalty in ("wgan-gp", "wgan-lp")
        self.penalty = None
        if lo.penalty != "none":
            from ..penalties import LazyRegularizer

            self.penalty = LazyRegularizer(lo.penalty, every=lo.penalty_every, weight=lo.penalty_weight)
        algos.attach(self)  # issue 13: unrolled GAN, VAE-GAN / KL-GAN encoder

        self.step = 0
        # run.cuda_graph: eager for the first steps, then one captured step replayed (graph_step.py)
        self.captured = CapturedStep(self._step_tensors, self._graph_ready, self.device) if r.cuda_graph else None
        # D's target tricks (d_targets' arguments), or None where D's targets are the plain 1 / 0
        self._target_tricks = (dict(smoothing=t.label_smoothing, random=t.random_labels,
                                    real_range=t.real_label_range, fake_range=t.fake_label_range, flip=t.label_flip)
                               if lo.loss in L.WITH_TARGETS and (t.label_smoothing > 0 or t.random_labels
                                                                 or t.label_flip > 0) else None)
        least = L.d_loss_minimum(lo.loss, **self._target_tricks) if self._target_tricks else 0.0
        self.monitor = FailureMonitor(cfg.monitor, lo.loss, report=self._report, loss_d_minimum=least, train_cfg=cfg)
        self.class_probe = None
        if cfg.monitor.class_histogram:
            from .collapse import ClassHistogramProbe, metrics_classifier

            gc = torch.Generator().manual_seed(r.seed + 7)
            self.class_probe = ClassHistogramProbe(
                metrics_classifier(d.dataset, self.device, log=self.log),
                sample_z(cfg.monitor.class_samples, m.nz, m.z_dist, generator=gc).to(self.device))
        self._stop_reason: Optional[str] = None
        self._log_acc: dict[str, list] = {}
        self._last_real = None
        self._last_fake = None
        self._toy_eval_z = None
        self._eval_warned = False
        self.best_value: Optional[float] = None  # of run.best_metric, for checkpoints/best.pt
        self.last_good_checkpoint: Optional[str] = None
        self._resumed = resume is not None
        if resume is not None:
            self.load_state_dict(resume)
        self.dist.sync_rng(self.device)
        os.makedirs(self.out, exist_ok=True)
        resume_step = self.step if self._resumed else None
        log_cls = JsonlLog if self.dist.is_main else NullLog
        self.metrics = log_cls(os.path.join(self.out, "metrics.jsonl"), resume_step)
        self.events = log_cls(os.path.join(self.out, "events.jsonl"), resume_step)
        self.tb = None
        if r.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.out, "tensorboard"), purge_step=resume_step)
            except ImportError as exc:
                self.log(f"fastgan train: run.tensorboard is on but TensorBoard is unavailable ({exc}); "
                         "pip install tensorboard. Logging to metrics.jsonl only")

    # ------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------
    def _optimizer(self, model, kind: str, lr: float, momentum: float, weight_decay: float = 0.0):
        o = self.cfg.optim
        return build_optimizer(model.parameters(), kind, lr, (o.beta1, o.beta2), momentum, weight_decay,
                               o.weight_decay_mode, o.fused_adam, capturable=self.cfg.run.cuda_graph)

    def pixel_pair(self, fake: torch.Tensor, z: torch.Tensor, labels=None):
        """(prediction, target) for ``loss.pixel_loss``: with ``loss.hybrid`` the encoder-decoder's reconstruction
        of this step's real batch and that batch (the reconstructive setting); otherwise None, as no built-in
        data set has paired images (a paired setting overrides this)."""
        if self.hybrid is not None and self.hybrid.last_pair is not None:
            return self.hybrid.last_pair
        return None

    def _prepare_real(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_to_unit:
            x = (x + 1.0) * 0.5
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def _report(self, event: dict) -> None:
        line = f"[fastgan monitor] {event['message']}"
        self._write(line)
        if hasattr(self, "events"):
            self.events.write(event)

    def _write(self, line: str) -> None:
        bar = getattr(self, "_bar", None)
        if bar is not None and not bar.disable:
            bar.write(line, file=sys.stdout)
        else:
            self.log(line)

    # ------------------------------------------------------------------------------------------
    # Forward helpers
    # ------------------------------------------------------------------------------------------
    def _vbn_ref_g(self, g) -> None:
        if self.g_vbn:
            with virtual_batch_reference(g):
                g(self.vbn_z, self.vbn_labels)

    def _vbn_ref_d(self, d) -> None:
        if self.d_vbn:
            sigma = self.noise_std()
            with virtual_batch_reference(d):
                d.forward_all(pack(add_instance_noise(self.vbn_real, sigma), self.cfg.tricks.pack),
                              self.vbn_real_labels if self.conditional != "none" else None)

    def noise_std(self, step: Optional[int] = None) -> float:
        t = self.cfg.tricks
        return instance_noise_std(self.step if step is None else step, t.instance_noise, self.noise_decay_steps)

    def _d_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return pack(self.dist.add_instance_noise(x, sigma), self.cfg.tricks.pack)

    def _labels_for_d(self, y):
        return y if self.conditional not in ("none", "semi") else None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # a captured step cannot keep autocast's cast weights between replays: no cache under run.cuda_graph
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self.cfg.run.cuda_graph)

    def _update(self, loss: torch.Tensor, model, opt, scaler, watch: Optional[torch.Tensor] = None,
                on_device: bool = False) -> tuple[Union[bool, torch.Tensor], torch.Tensor]:
        """Backward + optimiser step unless the loss or the gradient is not finite; (finite, grad norm).

        ``on_device`` (with a fused Adam, no gradient scaler): the optimiser itself skips a non-finite
        update, told so on the device, and ``finite`` comes back as a 0-d bool tensor that the step reads
        with its statistics: no host read here, so the host goes on queueing work while the GPU runs.
        With fp16's gradient scaler an overflow (an inf gradient, or the inf penalty of an overflowing
        scaled gradient, inf or NaN) is the scaler's business: it skips the step and lowers the scale.
        Only a non-finite ``watch`` (the loss without the penalty) counts as a failure there.
        """
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            gnorm = _grad_norm(model.parameters())
            finite_t = torch.isfinite(loss).logical_and_(torch.isfinite(gnorm))
            if on_device and skips_on_device(opt):
                finite_t = self.dist.all_true_on_device(finite_t)
                step_unless_nonfinite(opt, finite_t)
                return finite_t, gnorm
            # one host sync for both: each one waits for the GPU to finish everything queued
            finite = bool(finite_t)
            finite = self.dist.all_true(finite, self.device)
            if finite:
                opt.step()
            else:
                opt.zero_grad(set_to_none=True)
            return finite, gnorm
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gnorm = _grad_norm(model.parameters())
        finite = bool(torch.isfinite(loss if watch is None else watch))
        finite = self.dist.all_true(finite, self.device)
        if finite:
            scaler.step(opt)  # skipped by the scaler itself when the gradient overflowed
        else:
            opt.zero_grad(set_to_none=True)
        scaler.update()
        return finite, gnorm

    def _check_impl(self, impl: str) -> None:
        """A backend asked for by name must be live on the run's device: said here, as a configuration
        error, not as a traceback from the first layer's forward."""
        try:
            _backend.resolve(impl, self.device, "model.impl")
        except _backend.BackendUnavailableError as exc:
            raise ConfigError([str(exc)]) from None  # ("model.impl: impl='triton' is unavailable: <why>")

    # ------------------------------------------------------------------------------------------
    # One step
    # ------------------------------------------------------------------------------------------
    def d_step(self, keep_fake: bool, batch: Optional[tuple] = None) -> dict:
        """One D update on ``batch`` (real images, labels; default: the stream's next)."""
        cfg, t, lo = self.cfg, self.cfg.tricks, self.cfg.loss
        real, y_real = self.stream.next() if batch is None else batch
        real = self._prepare_real(real)
        n = real.shape[0]
        n_all = n * self.dist.world_size  # drawn for the global batch, this rank's share kept
        z = self.dist.shard(sample_z(n_all, cfg.model.nz, cfg.model.z_dist, device=self.device))
        if self._pairs_labels and y_real is not None:
            # a penalty at interpolates of real and fake pairs: each fake made with its real partner's class,
            # so the critic is conditioned on one class along the line (Gulrajani et al.'s conditional code)
            y_fake = y_real.to(self.device)
        else:
            y_fake = (self.dist.shard(sample_labels(n_all, self.num_classes, device=self.device))
                      if self.num_classes else None)
        with self._autocast():
            swap = self.g_pool.draw() if self.g_pool is not None else None
            if swap is not None:
                g_src = self.g_pool.load(swap, self.G)
                keep_fake = False
            else:
                g_src = self.G_train
            with torch.set_grad_enabled(keep_fake):
                self._vbn_ref_g(g_src)
                fake_live = g_src(z, y_fake)
            fake = fake_live.detach()
            if self.replay is not None:
                new_fake, new_labels = fake, y_fake
                fake, y_fake_d = self.replay.mix(fake, y_fake)
                if bool(torch.isfinite(new_fake).all()):  # a NaN fake would poison later D steps
                    self.replay.push(new_fake, new_labels)
            else:
                y_fake_d = y_fake
            sigma = self.noise_std()
            real_in, fake_in = self._d_input(real, sigma), self._d_input(fake, sigma)
            npk = real_in.shape[0]
            tricks = self._target_tricks
            w = self.dist.world_size  # targets drawn for the global batch, this rank's share kept
            t_real = self.dist.shard(d_targets(npk * w, True, device=self.device, **tricks)) if tricks else None
            t_fake = self.dist.shard(d_targets(npk * w, False, device=self.device, **tricks)) if tricks else None

            self._vbn_ref_d(self.D)
            yr, yf = self._labels_for_d(y_real), self._labels_for_d(y_fake_d)
            one_pass = self.d_one_pass and fake_in.shape[0] == npk  # (equal halves)
            if t.separate_batches and not one_pass:
                out_r, cls_r, _ = self.D_train.forward_all(real_in, yr)
                out_f, cls_f, feat_f = self.D_train.forward_all(fake_in, yf)
            else:
                both = torch.cat([real_in, fake_in], 0)
                yb = None if yr is None else torch.cat([yr, yf], 0)
                with separate_batches(self.D, 2) if one_pass else contextlib.nullcontext():
                    out, cls, feat = self.D_train.forward_all(both, yb)
                out_r, out_f, feat_f = out[:npk], out[npk:], feat[npk:]
                cls_r, cls_f = (None, None) if cls is None else (cls[:npk], cls[npk:])
            loss_adv = L.d_loss(lo.loss, out_r, out_f, t_real, t_fake)
            loss = loss_adv
            stats = {}
            if self.conditional == "acgan":
                aux = F.cross_entropy(cls_r.float(), y_real) + F.cross_entropy(cls_f.float(), y_fake_d)
                loss = loss + lo.aux_weight * aux
                stats["aux_d"] = aux.detach()
                stats["acc_cls_real"] = (cls_r.argmax(1) == y_real).float().mean().detach()
            if self.D.generator_classifier is not None:  # MGAN
                cls_g = algos.generator_classifier_loss(self.D, feat_f)
                loss = loss + lo.generator_classifier * cls_g
                stats["gen_cls_d"] = cls_g.detach()
            if self.semi is not None:
                loss = loss + self.semi.d_loss(self, stats)
            if self.hybrid is not None and (extra := self.hybrid.d_loss(self, real, y_real)) is not None:
                loss = loss + extra
            if self.penalty is not None:
                critic = (lambda x, y=None: self.D_train(x, y))
                # R2 penalises the critic at the fakes, under their own classes; the others at (or between)
                # reals, under the reals' (interpolates: the pair's one class, see _pairs_labels)
                labels = yf if lo.penalty == "r2" else yr
                kw = dict(labels=labels) if labels is not None else {}
                if self.scaler_d is not None:
                    kw["scaler"] = self.scaler_d
                kw.update(self.dist.penalty_kwargs(self.penalty, lo.penalty, real_in))
                gp = self.penalty(critic, real_in, fake_in, impl=cfg.model.impl, **kw)
                if gp is not None:
                    loss = loss + gp
                    stats["penalty"] = gp.detach()
            if self.hist_d is not None:
                loss = loss + self.hist_d.penalty(self.D)
        update = not self.schedule.balance or self.schedule.d_update(
            self.dist.mean_value(loss_adv.item(), self.device))
        if update:  # historical averaging folds D in only after an update known to be finite: a host read
            finite, gnorm = self._update(loss, self.D, self.opt_d, self.scaler_d, watch=loss_adv,
                                         on_device=self.hist_d is None)
        else:  # loss balancing: D's loss is below balance_d_above, D rests
            finite, gnorm = True, torch.zeros((), device=self.device)
        # finite as a tensor: the update was skipped on the device if it was not finite, and clamping weights
        # that did not move is a no-op on weights an earlier update clamped
        if update and (torch.is_tensor(finite) or finite):
            if lo.clip_weights > 0:
                with torch.no_grad():
                    for p in self.D.parameters():
                        p.clamp_(-lo.clip_weights, lo.clip_weights)
            if self.hist_d is not None:
                self.hist_d.update(self.D)
        self._last_real = real
        self._last_fake = fake
        with torch.no_grad():
            as_prob = lo.loss in ("minimax", "nonsaturating")
            stats.update(loss_d=loss_adv.detach(), grad_d=gnorm.detach(),
                         d_real=(torch.sigmoid(out_r) if as_prob else out_r).float().mean(),
                         d_fake=(torch.sigmoid(out_f) if as_prob else out_f).float().mean(),
                         d_acc=L.d_accuracy(out_r, out_f, lo.loss),
                         swap_g=float(swap is not None), d_updated=float(update))
        stats["_finite"] = finite
        stats["_out_f"] = out_f.detach()
        stats["_fake_live"] = fake_live if keep_fake else None
        stats["_z"], stats["_y_fake"], stats["_y_real"] = z, y_fake, y_real
        return stats

    def g_step(self, d_stats: dict) -> dict:
        cfg, lo = self.cfg, self.cfg.loss
        with self._autocast():
            fake, y_fake = d_stats["_fake_live"], d_stats["_y_fake"]
            z = d_stats["_z"]
            if fake is None:  # swapped G in the D step, or not reusable: draw anew
                n = cfg.run.batch_size
                z = self.dist.shard(sample_z(n, cfg.model.nz, cfg.model.z_dist, device=self.device))
                y_fake = (self.dist.shard(sample_labels(n, self.num_classes, device=self.device))
                          if self.num_classes else None)
                self._vbn_ref_g(self.G)
                fake = self.G_train(z, y_fake)
            swap = self.d_pool.draw() if self.d_pool is not None else None
            d_adv = self.d_pool.load(swap, self.D) if swap is not None else self.D
            if lo.unrolled_steps:  # Metz et al. 2017: G plays against D a few optimiser steps ahead
                d_adv = algos.unrolled_discriminator(self, fake, d_stats["_y_real"], y_fake)
            for p in self.D.parameters():
                p.requires_grad_(False)
            try:
                self._vbn_ref_d(d_adv)
                sigma = self.noise_std()
                fake_in = self._d_input(fake, sigma)
                out_f, cls_f, feat_f = d_adv.forward_all(fake_in, self._labels_for_d(y_fake))
                loss = torch.zeros((), device=self.device)
                stats = {}
                if not lo.feature_matching_only:
                    adv = L.g_loss(lo.loss, out_f)
                    loss = loss + adv
                    stats["loss_g_adv"] = adv.detach()
                if lo.feature_matching > 0:
                    with torch.no_grad():
                        real_in = self._d_input(self._last_real, sigma)
                        _, _, feat_r = d_adv.forward_all(real_in, self._labels_for_d(d_stats["_y_real"]))
                    fm = L.feature_matching_loss(feat_r, feat_f)
                    loss = loss + lo.feature_matching * fm
                    stats["feature_matching"] = fm.detach()
                if self.conditional == "acgan":
                    aux = F.cross_entropy(cls_f.float(), y_fake)
                    loss = loss + lo.aux_weight * aux
                    stats["aux_g"] = aux.detach()
                if self.D.generator_classifier is not None:  # MGAN: G also wants its generators told apart
                    cls_g = algos.generator_classifier_loss(self.D, feat_f)
                    loss = loss + lo.generator_classifier * cls_g
                    stats["gen_cls_g"] = cls_g.detach()
                if self.hybrid is not None:
                    loss = loss + self.hybrid.g_loss(self, d_adv, self._last_real, d_stats["_y_real"], stats)
                if self.hist_g is not None:
                    loss = loss + self.hist_g.penalty(self.G)
                extra, extra_stats = g_extra_losses(self, fake, z, y_fake)  # mode seeking, pixel loss
                if extra is not None:
                    loss = loss + extra
                stats.update(extra_stats)
            finally:
                for p in self.D.parameters():
                    p.requires_grad_(True)
        update = True
        if self.schedule.balance:
            own = stats.get("loss_g_adv", loss)
            update = self.schedule.g_update(self.dist.mean_value(own.item(), self.device),
                                            bool(d_stats.get("_d_stepped", True)))
        if update:  # historical averaging and the hybrid's encoder act on G's finiteness: a host read
            finite, gnorm = self._update(loss, self.G, self.opt_g, self.scaler_g,
                                         on_device=self.hist_g is None and self.hybrid is None)
        else:  # loss balancing: G's loss is below balance_g_above, G rests
            finite, gnorm = True, torch.zeros((), device=self.device)
        stats["g_updated"] = float(update)
        # (with either, finite is a bool: _update read it back)
        if self.hybrid is not None:
            self.hybrid.step(finite and update)  # the encoder steps with G (no backward ran while G rests)
        if self.hist_g is not None and finite and update:
            self.hist_g.update(self.G)
        if self.ema is not None and torch.is_tensor(finite):  # G's update was skipped on the device if not finite
            self.ema.update(self.G, self.step, finite=finite)
        elif self.ema is not None and finite:
            self.ema.update(self.G, self.step)
        self._last_fake = fake.detach()
        stats.update(loss_g=loss.detach(), grad_g=gnorm.detach(), swap_d=float(swap is not None))
        stats["_finite"] = finite
        return stats

    def _step_tensors(self, batches: Optional[list] = None) -> dict:
        """One step's work, n_critic D updates and one G update, on ``batches`` (n_critic (real, labels)
        pairs; default: the stream's next): its statistics, tensors or Python numbers, with its finiteness in
        ``_finite_d`` / ``_finite_g`` (bools, or 0-d device tensors when the updates were skipped on the
        device).  Reads nothing back from the device unless an option needs it: what run.cuda_graph captures."""
        n_critic = self.cfg.optim.n_critic
        d_stats = {}
        d_finite = True
        # a non-finite step must not leave NaN running statistics behind
        guard = self._buffer_guard
        if guard is not None and guard.guards(self.G, self.D):
            guard.save()
        else:
            guard = self._buffer_guard = BufferGuard(self.G, self.D)
        d_stepped = False
        g_on = self.schedule.g_active(self.step)  # False while D pre-trains (optim.d_pretrain)
        for i in range(n_critic):
            d_stats = self.d_step(keep_fake=g_on and (i == n_critic - 1), batch=None if batches is None else batches[i])
            d_finite = d_finite & d_stats["_finite"]  # a bool, or a device tensor (updates skipped on the device)
            d_stepped |= d_stats["d_updated"] > 0
        d_stats["_d_stepped"] = d_stepped
        if g_on:
            g_stats = self.g_step(d_stats)
        else:  # G rests; its loss on this step's fakes (before D's update) keeps the log's column
            g_stats = {"loss_g": L.g_loss(self.cfg.loss.loss, d_stats["_out_f"]), "grad_g": 0.0, "g_updated": 0.0,
                       "_finite": True}
        stats = {k: v for k, v in {**d_stats, **g_stats}.items() if not k.startswith("_")}
        stats["_finite_d"], stats["_finite_g"] = d_finite, g_stats["_finite"]
        return stats

    def _graph_ready(self, eager_steps: int) -> bool:
        """run.cuda_graph: whether the step can be captured now: warmed up, and its Python the same from now on
        (the EMA started; D's pre-training over and G updated once eagerly, so that its optimiser's state
        exists: made during the capture, it would be made again, zeroed, by every replay)."""
        return (eager_steps >= self.cfg.run.cuda_graph_warmup and self.schedule.g_active(self.step - 1)
                and (self.ema is None or self.step >= self.ema.start))

    def train_step(self) -> dict:
        """n_critic D updates and one G update; returns the step's statistics (floats)."""
        n_critic = self.cfg.optim.n_critic
        if self.captured is not None:
            raw = self.captured([self.stream.next() for _ in range(n_critic)])
            if self.captured.replays == 1:  # the step just captured: say so once
                self._write(f"fastgan train: run.cuda_graph: step {self.step + 1} captured in a CUDA graph after "
                            f"{self.captured.eager_steps} eager steps; replaying it from now on")
        else:
            raw = self._step_tensors()
        self.step += 1
        stats = {k: v for k, v in raw.items() if not k.startswith("_")}
        flags = {"_finite_d": raw["_finite_d"], "_finite_g": raw["_finite_g"]}
        # finiteness decided on the device is read back with the statistics, in the same transfer
        stats.update({k: v.float() for k, v in flags.items() if torch.is_tensor(v)})
        out = read_stats(stats)
        d_finite, g_finite = (bool(out.pop(k)) if torch.is_tensor(v) else v for k, v in flags.items())
        out = self.dist.mean_stats(out, self.device)  # global-batch means: the same numbers on every rank
        out["d_steps"] = n_critic
        out["noise_std"] = self.noise_std(self.step - 1)
        if not (d_finite and g_finite):
            what = ", ".join(w for w, ok in (("D's loss/gradient", d_finite), ("G's loss/gradient", g_finite))
                             if not ok)
            self._buffer_guard.restore()
            self.monitor.nonfinite(self.step, what)  # raises TrainingDiverged after the patience
        else:
            self.monitor.finite_step()
        for pool, model in ((self.g_pool, self.G), (self.d_pool, self.D)):
            if pool is not None:
                pool.maybe_snapshot(self.step, model)
        return out

    # ------------------------------------------------------------------------------------------
    # Samples, evaluation
    # ------------------------------------------------------------------------------------------
    def sampling_generator(self):
        return self.ema.model if self.ema is not None else self.G

    @contextlib.contextmanager
    def _frozen_rng(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        g = generator or self.sampling_generator()
        was = g.training
        g.eval()
        try:
            self._vbn_ref_g(g)
            out = [g(z[i:i + 512], None if labels is None else labels[i:i + 512]) for i in range(0, len(z), 512)]
        finally:
            g.train(was)
        return torch.cat(out, 0)

    def write_samples(self) -> Optional[str]:
        if not self.dist.is_main:
            return None
        os.makedirs(self.sample_dir, exist_ok=True)
        name = f"step_{self.step:06d}"
        with self._frozen_rng():
            x = self.generate(self.fixed_z, self.fixed_labels)
            if self.toy:
                png = os.path.join(self.sample_dir, name + ".png")
                real = self.stream.fixed_batch(min(2000, self.stream.n), self.cfg.run.seed + 4)[0]
                stats = toy_mode_stats(x, self.mixture)
                if not self.cfg.run.plots:
                    from .._io import atomic_write

                    atomic_write(os.path.join(self.sample_dir, name + ".npy"),
                                 lambda f: np.save(f, x.float().cpu().numpy()))
                    return os.path.join(self.sample_dir, name + ".npy")
                save_toy_samples(x, png, os.path.join(self.sample_dir, name + ".npy"), self.mixture.centers, real,
                                 title=f"{self.data_info['dataset']} step {self.step}: {stats['modes']}/"
                                       f"{self.mixture.num_modes} modes, {stats['high_quality']:.0%} high quality")
                return png
            x = self.G.to_data_range(x)
            if self.tb is not None:
                from torchvision.utils import make_grid

                self.tb.add_image("samples", make_grid(x.float().cpu(), nrow=8, normalize=True, value_range=(-1, 1)),
                                  self.step)
            png = os.path.join(self.sample_dir, name + ".png")
            nrow = self.num_classes if self.num_classes and self.num_classes <= 16 else 8
            save_grid(x, png, nrow=nrow)
            if self.cfg.tricks.slerp_grid and self.fixed_z.shape[0] >= 2:
                z = slerp_grid(self.fixed_z[:16], rows=8, steps=8)
                labels = None
                if self.num_classes:
                    labels = self.fixed_labels[:16:2].repeat_interleave(8)[:z.shape[0]]
                save_grid(self.G.to_data_range(self.generate(z, labels)),
                          os.path.join(self.sample_dir, f"slerp_{self.step:06d}.png"), nrow=8)
        return png

    @torch.no_grad()
    def quality_proxy(self) -> dict:
        """Cheap sample-quality numbers for the log / monitor: diversity of the last fake batch relative to
        the last real batch; on toy data, modes covered and high-quality fraction of 2500 fixed-z samples."""
        out = {}
        if self._last_fake is not None and self._last_real is not None:
            real_d = _pairwise_mean(self._last_real)
            if real_d > 0:
                out["diversity"] = _pairwise_mean(self._last_fake) / real_d
        if self.toy:
            if self._toy_eval_z is None:
                g = torch.Generator().manual_seed(self.cfg.run.seed + 5)
                self._toy_eval_z = sample_z(2500, self.cfg.model.nz, self.cfg.model.z_dist, generator=g).to(
                    self.device)
                self._toy_eval_y = (sample_labels(2500, self.num_classes, generator=g).to(self.device)
                                    if self.num_classes else None)
            with self._frozen_rng():
                pts = self.generate(self._toy_eval_z, self._toy_eval_y)
            out.update(toy_mode_stats(pts, self.mixture))
        if self.class_probe is not None:  # monitor.class_histogram: classes of fixed-z samples
            with self._frozen_rng():
                out.update(self.class_probe(lambda z, y: self.G.to_data_range(self.generate(z, y))))
        if self.semi is not None:
            out.update(self.semi.accuracy(self))
        return out

    def evaluate(self) -> dict:
        """fastgan.metrics when present (behind run.eval_every): toy mode metrics or a classifier score."""
        try:
            import fastgan.metrics as metrics
        except ImportError as exc:
            return self._eval_unavailable(f"fastgan.metrics cannot be imported ({exc})")
        n = self.cfg.run.eval_samples
        with self._frozen_rng():
            g = torch.Generator().manual_seed(self.cfg.run.seed + 6)
            z = sample_z(n, self.cfg.model.nz, self.cfg.model.z_dist, generator=g).to(self.device)
            y = sample_labels(n, self.num_classes, generator=g).to(self.device) if self.num_classes else None
            x = self.G.to_data_range(self.generate(z, y)).cpu()
            try:
                if self.toy:
                    res = metrics.toy_mode_metrics(x, self.data_info["dataset"])
                else:
                    clf, _info = metrics.load_classifier(self.data_info["dataset"], device=self.device,
                                                         log=self._write)
                    _features, logits = metrics.classifier_outputs(clf, x)
                    res = {"classifier_score": metrics.classifier_score(logits)[0]}
                    counts = metrics.mode_counts(logits.argmax(1), logits.shape[1])
                    res.update({k: v for k, v in counts.items() if isinstance(v, (int, float))})
            except Exception as exc:  # noqa: BLE001 - metrics are optional; say once why they are off
                return self._eval_unavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return {f"eval_{k}": v for k, v in dict(res).items() if isinstance(v, (int, float))}

    def _keep_best(self, row: dict) -> None:
        """Write checkpoints/best.pt when run.best_metric improved."""
        name = self.cfg.run.best_metric
        value = row.get(name)
        if not name or value is None or not math.isfinite(value):
            return
        mode = self.cfg.run.best_mode
        if mode == "auto":
            mode = "min" if any(k in name for k in ("kl", "fid", "kid")) else "max"
        better = self.best_value is None or (value > self.best_value if mode == "max" else value < self.best_value)
        if better and _all_finite(self.G) and _all_finite(self.D):
            self.best_value = float(value)
            save_checkpoint(self.state_dict(), os.path.join(self.ckpt_dir, "best.pt"), keep_previous=False)
            self._write(f"[fastgan train] step {self.step}: {name} = {value:.4g}, the best so far: wrote best.pt")

    def _eval_unavailable(self, why: str) -> dict:
        if not self._eval_warned:
            self._write(f"[fastgan train] periodic evaluation is off: {why}")
            self._eval_warned = True
        return {}

    # ------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "config": self.cfg.to_dict(), "spec": self.spec,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scalers": {"d": self.scaler_d.state_dict() if self.scaler_d is not None else None,
                        "g": self.scaler_g.state_dict() if self.scaler_g is not None else None},
            "rng": capture_rng(), "data": self.stream.state_dict(),
            "tricks": {
                "replay": self.replay.state_dict() if self.replay is not None else None,
                "g_pool": self.g_pool.state_dict() if self.g_pool is not None else None,
                "d_pool": self.d_pool.state_dict() if self.d_pool is not None else None,
                "hist_g": self.hist_g.state_dict() if self.hist_g is not None else None,
                "hist_d": self.hist_d.state_dict() if self.hist_d is not None else None,
                "penalty": self.penalty.state_dict() if self.penalty is not None else None,
                "noise_decay_steps": self.noise_decay_steps,
            },
            "fixed": {"z": self.fixed_z.cpu(), "labels": None if self.fixed_labels is None else self.fixed_labels.cpu(),
                      "vbn_z": None if self.vbn_z is None else self.vbn_z.cpu(),
                      "vbn_labels": None if self.vbn_labels is None else self.vbn_labels.cpu()},
            "monitor": self.monitor.state_dict(),
            "log_acc": {k: [float(x) for x in v] for k, v in self._log_acc.items()},
            "best_value": self.best_value,
            "algos": algos.state_dict(self),
            "meta": {"torch": str(torch.__version__), "time": time.time(), "device": str(self.device)},
        }

    def load_state_dict(self, state: dict) -> None:
        dev = self.device
        try:
            self.G.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint does not match this configuration: {str(exc).splitlines()[0]}") \
                from None
        for key, scaler in (("d", self.scaler_d), ("g", self.scaler_g)):
            saved = (state.get("scalers") or {}).get(key)
            if scaler is not None and saved:
                scaler.load_state_dict(saved)
        tr = state.get("tricks", {})
        saved_config = state.get("config") or {}
        # (a checkpoint from before the horizon was saved: its own run length, what it decayed over)
        self.noise_decay_steps = int(tr.get("noise_decay_steps")
                                     or (saved_config.get("tricks") or {}).get("instance_noise_decay")
                                     or (saved_config.get("run") or {}).get("steps") or self.noise_decay_steps)
        for name in ("replay", "g_pool", "d_pool"):
            obj = getattr(self, name)
            if obj is not None and tr.get(name) is not None:
                obj.load_state_dict(tr[name], device=dev)
        for name in ("hist_g", "hist_d", "penalty"):
            obj = getattr(self, name)
            if obj is not None and tr.get(name) is not None:
                obj.load_state_dict(tr[name])
        self.stream.load_state_dict(state["data"])
        self.monitor.load_state_dict(state.get("monitor", {}))
        self._log_acc = {k: list(v) for k, v in (state.get("log_acc") or {}).items()}
        self.best_value = state.get("best_value")
        algos.load_state_dict(self, state.get("algos"))
        self.step = int(state["step"])
        restore_rng(state["rng"])
        if self.captured is not None:  # run.cuda_graph: the graph holds the optimisers' replaced state tensors
            self.captured.reset()

    def kept_checkpoint(self) -> str:
        """The checkpoint a stop that writes none leaves to resume from (this run's last save, else the
        directory's), for the message saying so."""
        return self.last_good_checkpoint or find_resume_checkpoint(self.out) or "none written yet"

    def save(self, periodic: bool = False) -> Optional[str]:
        """Write checkpoints/last.pt (and step_N.pt when ``periodic``); refuses non-finite weights."""
        if not self.dist.is_main:
            return None
        if not (_all_finite(self.G) and _all_finite(self.D)):
            self._write(f"[fastgan train] not writing a checkpoint at step {self.step}: the weights are not finite "
                        f"(the last good one stays: {self.last_good_checkpoint})")
            return None
        path = last_path(self.out)
        save_checkpoint(self.state_dict(), path)
        self.last_good_checkpoint = path
        if periodic:
            step_path = os.path.join(self.ckpt_dir, f"step_{self.step:06d}.pt")
            try:
                if os.path.exists(step_path):
                    os.unlink(step_path)
                os.link(path, step_path)  # same bytes, no second write
            except OSError:
                import shutil

                shutil.copyfile(path, step_path)
            self._prune_periodic()
        return path

    def _prune_periodic(self) -> None:
        keep = self.cfg.run.keep_checkpoints
        if keep <= 0:
            return
        for _, path in periodic_checkpoints(self.ckpt_dir)[:-keep]:  # (by step number, not name)
            try:
                os.unlink(path)
            except OSError:
                pass

    # ------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        """SIGTERM and Ctrl-C (SIGINT) stop the run at the next step boundary, so the checkpoint written on
        stopping holds whole steps (a KeyboardInterrupt raised mid-step would leave D updated and G not, the
        data stream and RNG advanced: not the state of any step).  A second Ctrl-C stops at once.  Returns
        the handlers replaced, {signal: previous}, for :meth:`_restore_signals`."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_sigterm(signum, frame):
            self._stop_reason = "SIGTERM"

        first_at = []

        def on_sigint(signum, frame):
            # A second Ctrl-C stops now (the step in progress is not saved) -- but not one that follows the
            # first within a second (a terminal's and a launcher's copies of one), and not under torchrun:
            # there a rank stopping alone would leave the others waiting in a collective.
            if (self._stop_reason == "Ctrl-C" and not self.dist.enabled and first_at
                    and time.monotonic() - first_at[0] > 1.0):
                raise KeyboardInterrupt
            if self._stop_reason != "Ctrl-C":
                first_at[:] = [time.monotonic()]
                self._stop_reason = "Ctrl-C"
                again = "" if self.dist.enabled else " (Ctrl-C again to stop at once)"
                self._write(f"[fastgan train] Ctrl-C: stopping after this step{again}")

        previous = {}
        for sig, handler in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, on_sigint)):
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:  # (e.g. a background job of a script): left so
                    continue
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass

    def train(self, stop_after: Optional[int] = None) -> dict:
        """Train to ``run.steps`` (or stop once ``stop_after`` steps are done; for tests of resuming).

        Returns a summary dict: steps, seconds, status ("done" | "interrupted" | "diverged" | "out_of_memory"),
        paths.  SIGTERM and Ctrl-C stop it between steps (:meth:`_install_signals`) until it returns, its
        final samples and checkpoint included.
        """
        self._stop_reason = None  # (a train() after an interrupted one continues)
        previous_handlers = self._install_signals()
        try:
            return self._train(stop_after)
        finally:
            self._restore_signals(previous_handlers)

    def _train(self, stop_after: Optional[int]) -> dict:
        from tqdm.auto import tqdm

        cfg, r = self.cfg, self.cfg.run
        end = r.steps if stop_after is None else min(r.steps, stop_after)
        n_params = sum(p.numel() for p in self.G.parameters()), sum(p.numel() for p in self.D.parameters())
        what = (f"{cfg.resolved_arch().upper()} ({n_params[0] / 1e6:.2f}M + {n_params[1] / 1e6:.2f}M params)"
                f" on {self.data_info['dataset']} ({len(self.dataset)} samples)")
        self.log(f"fastgan train: {what}, loss {cfg.loss.loss}"
                 f"{', penalty ' + cfg.loss.penalty if cfg.loss.penalty != 'none' else ''}, "
                 f"steps {self.step} -> {end} of batch {r.batch_size} on {self.device} (impl={cfg.model.impl}, "
                 f"fused={cfg.model.fused}, {plural(torch.get_num_threads(), 'thread')}); out: {self.out}")
        if cfg.model.minibatch != "none" and not cfg.tricks.separate_batches:
            # the layer's batch statistic then spans real and fake together: what tells them apart is diluted
            self.log(f"fastgan train: note: model.minibatch={cfg.model.minibatch} sees one mixed real + fake batch "
                     "(its statistic averages both); tricks.separate_batches=true gives it pure batches as its "
                     "authors used it (the presets with it do)")
        status = "done"
        phase = "the training step"
        cut_short = False
        start_step = self.step
        t0 = time.perf_counter()
        # the statistics of the steps since the last metrics row (saved with a checkpoint: a run stopped between
        # log points logs the same averages after --resume as it would have without stopping)
        acc: dict[str, list] = self._log_acc
        self._bar = tqdm(total=end, initial=self.step, desc="train", unit="step",
                         disable=not r.progress or not self.dist.is_main, dynamic_ncols=True, file=sys.stderr)
        last_row = {}
        try:
            while self.step < end:
                self._stop_reason = self.dist.stop_reason(self._stop_reason, self.device)  # all ranks stop together
                if self._stop_reason:
                    raise Interrupted(self._stop_reason)
                phase = "the training step"
                stats = self.train_step()
                phase = "logging / sampling / evaluation / checkpointing"
                self.monitor.check_step(self.step, stats)
                for k, v in stats.items() if self.dist.is_main else ():
                    if isinstance(v, (int, float)):
                        acc.setdefault(k, []).append(v)
                elapsed = time.perf_counter() - t0
                done = self.step - start_step
                self._bar.update(1)
                if r.progress:
                    self._bar.set_postfix(loss_d=f"{stats['loss_d']:.3f}", loss_g=f"{stats['loss_g']:.3f}",
                                          img_s=f"{done * r.batch_size * cfg.optim.n_critic / elapsed:.0f}")
                if (self.step % r.log_every == 0 or self.step == end) and self.dist.is_main:
                    row = {"step": self.step}
                    row.update({k: float(np.mean(v)) for k, v in acc.items()})
                    row.update(self.quality_proxy())
                    row["seconds"] = elapsed
                    row["images_per_s"] = done * r.batch_size * cfg.optim.n_critic / max(elapsed, 1e-9)
                    if r.eval_every and self.step % r.eval_every == 0:
                        row.update(self.evaluate())
                        self._keep_best(row)
                    acc = self._log_acc = {}
                    self.metrics.write(row)
                    if self.tb is not None:
                        for k, v in row.items():
                            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                                self.tb.add_scalar(k, v, self.step)
                    self.monitor.check_log(self.step, row)
                    last_row = row
                    self._write(self._format_row(row, end))
                if r.sample_every and self.step % r.sample_every == 0 and self.step != end and self.dist.is_main:
                    self.write_samples()
                    if r.plots:
                        plot_metrics(self.metrics.path, os.path.join(self.out, "losses.png"))
                if r.checkpoint_every and self.step % r.checkpoint_every == 0 and self.step != end:
                    self.save(periodic=True)
        except Interrupted as exc:
            status = "interrupted"
            self._write(f"[fastgan train] {exc} at step {self.step}: saving a checkpoint and stopping")
        except KeyboardInterrupt:  # a second Ctrl-C (or one with no handler of ours): stop at once
            status = "interrupted"
            cut_short = phase == "the training step"
            self._write(f"[fastgan train] Ctrl-C at step {self.step}: "
                        + ("the step in progress was cut short, so no checkpoint is written for it"
                           if cut_short else "saving a checkpoint and stopping"))
        except TrainingDiverged as exc:
            status = "diverged"
            self._write(f"[fastgan monitor] {exc}")
        except Exception as exc:  # noqa: BLE001 - out of memory gets a hint; anything else propagates
            if not is_out_of_memory(exc):
                raise
            status = "out_of_memory"
            self._write(f"[fastgan train] {out_of_memory_message(cfg, self.step, exc, phase)}")
        finally:
            self._bar.close()
            self._bar = None
        seconds = time.perf_counter() - t0
        paths = {}
        if status in ("diverged", "out_of_memory"):
            ckpt = save_after_fault(self, status, in_step=phase == "the training step")
            if ckpt:
                paths["checkpoint"] = ckpt
        elif status == "done" and self.step == start_step:
            # (a --resume at or past --steps: rewriting the checkpoint would rotate the older .prev away)
            self._write(f"[fastgan train] already at step {self.step}: nothing to train, nothing rewritten")
        elif status == "interrupted" and cut_short:
            self._write(f"[fastgan train] the last good checkpoint stays: {self.kept_checkpoint()}")
        else:
            paths["samples"] = self.write_samples()
            ckpt = self.save(periodic=status == "done" and r.checkpoint_every > 0)
            if ckpt:
                paths["checkpoint"] = ckpt
        plot = (plot_metrics(self.metrics.path, os.path.join(self.out, "losses.png"))
                if r.plots and self.dist.is_main else None)
        if plot:
            paths["plot"] = plot
        paths["metrics"] = self.metrics.path
        if self.tb is not None:
            self.tb.close()
        if status in ("done", "interrupted"):  # (the statuses every rank reaches together)
            self.dist.wait_for_all(self.device)
        steps_done = self.step - start_step
        self.log(f"fastgan train: {status} at step {self.step} ({plural(steps_done, 'step')} in {seconds:.1f}s, "
                 f"{steps_done / max(seconds, 1e-9):.2f} steps/s); wrote {', '.join(p for p in paths.values() if p)}")
        return {"status": status, "step": self.step, "steps": steps_done, "seconds": seconds, "paths": paths,
                "final": last_row, "events": list(self.monitor.events)}

    @staticmethod
    def _format_row(row: dict, end: int) -> str:
        parts = [f"step {row['step']:>6}/{end}"]
        for key, fmt in (("loss_d", "{:.4f}"), ("loss_g", "{:.4f}"), ("d_real", "{:.3f}"), ("d_fake", "{:.3f}"),
                         ("penalty", "{:.3f}"), ("grad_d", "{:.2f}"), ("grad_g", "{:.2f}"), ("diversity", "{:.2f}"),
                         ("modes", "{:.0f}"), ("high_quality", "{:.2f}"), ("images_per_s", "{:.0f}")):
            if key in row and isinstance(row[key], (int, float)):
                parts.append(f"{key} {fmt.format(row[key])}")
        return "  ".join(parts)


def train(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None) -> dict:
    """Train from ``cfg``; with ``resume`` continue from ``<run.out>/checkpoints/last.pt`` when it exists."""
    state = None
    if resume:
        found = load_resume_checkpoint(cfg.run.out, log=log)
        if found is not None:
            path, state = found
            log(f"fastgan train: resuming from {path} (step {state['step']})")
        else:
            log(f"fastgan train: nothing to resume under {cfg.run.out}; starting from scratch")
    trainer = Trainer(cfg, resume=state, log=log)
    return trainer.train(stop_after=stop_after)
