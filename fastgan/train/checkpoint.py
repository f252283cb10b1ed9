"""Trainer checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is a ``torch.save``'d dict (loadable with ``weights_only=True``:
tensors, numbers, strings, lists and dicts only)::

    format      "fastgan-train"           version   1
    step        G steps done
    config      the TrainConfig as a dict
    spec        {"generator": ..., "discriminator": ..., "data": ...}: how to rebuild the models
                (fastgan.train.models.build_generator / build_discriminator)
    generator, discriminator, ema (or None), opt_g, opt_d     state dicts
    rng         torch (CPU and every CUDA device), numpy and python random states
    data        the data stream's position: seed, epoch, index within the epoch's permutation
    tricks      replay buffer, snapshot pools, historical averages, lazy penalty counter
    fixed       the fixed z (and labels) of the sample grids, the VBN reference batches
    monitor     the failure monitor's state (and the metrics it tracks)
    checksum    {"algorithm", "sha256"} of everything above (checkpoint_integrity), verified on load

Writes go to a temporary file in the same directory, are fsync'd and then
``os.replace``'d over the target (and the directory fsync'd); the target's
previous version is first moved to ``<name>.prev.pt`` so one good older
checkpoint always survives.  Loading a file that is missing, empty,
truncated, damaged (checksum mismatch) or not a training checkpoint raises
:class:`CheckpointError` with one line naming the file and what is wrong;
``--resume`` then falls back to ``<name>.prev.pt`` with a warning.

For other tools (``fastgan sample``, ``fastgan eval``)::

    g = load_generator(path, device="cpu")            # nn.Module in eval mode, EMA weights if any
    x = generate(g, 64, seed=0)                       # (64, C, H, W) images in [-1, 1] (or (64, 2) points)
"""
from __future__ import annotations

import os
import random
import re
from typing import Optional

import numpy as np
import torch

from .._io import atomic_write
from .._device import resolve_device
from . import _test_hooks
from .checkpoint_integrity import checksum_problem, describe_foreign, describe_unreadable, with_checksum

FORMAT = "fastgan-train"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or is not a fastgan training checkpoint."""


# ----------------------------------------------------------------------------
# RNG states as plain tensors / lists (weights_only-loadable)
# ----------------------------------------------------------------------------

def capture_rng() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


# ----------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------

def previous_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.pt'}"


def save_checkpoint(state: dict, path: str, keep_previous: bool = True) -> None:
    """Atomically write ``state`` to ``path``; the old file (if any) becomes ``<name>.prev.pt``."""
    state = dict(state)
    state.setdefault("format", FORMAT)
    state.setdefault("version", VERSION)
    state = with_checksum(state)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(path)
    # With keep_previous, the old file becomes .prev only once the new one is durable: at
    # every moment either path or its .prev holds a complete checkpoint.
    rotate = keep_previous and os.path.exists(path)
    atomic_write(path, _test_hooks.checkpoint_writer(state),
                 before_replace=(lambda: os.replace(path, previous_path(path))) if rotate else None)


def _remove_stale_temporaries(path: str) -> None:
    """Temporary files of ``path`` left by a process killed mid-write (atomic_write's ``.<name>.*.tmp``)."""
    directory, name = os.path.split(os.path.abspath(path))
    for f in os.listdir(directory):
        if f.startswith(f".{name}.") and f.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, f))
            except OSError:
                pass


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a fastgan training checkpoint; a missing, truncated or foreign file raises CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory (did you mean {os.path.join(path, 'last.pt')}?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, not a torch file at all
        raise CheckpointError(f"checkpoint {path} cannot be read: {describe_unreadable(path, exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a fastgan training checkpoint: {describe_foreign(state)}")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer fastgan (checkpoint version {state['version']})")
    problem = checksum_problem(state)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    return state


_PERIODIC = re.compile(r"step_(\d+)\.pt")


def periodic_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the periodic ``step_N.pt`` checkpoints in ``ckpt_dir``, oldest first -- by step number,
    not name (``step_1000000.pt`` sorts before ``step_999000.pt`` as text)."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, name)) for name in names if (m := _PERIODIC.fullmatch(name))]
    return sorted(found)


def last_path(out_dir: str) -> str:
    """A run directory's newest checkpoint: ``checkpoints/last.pt`` (its older one: :func:`previous_path`)."""
    return os.path.join(out_dir, "checkpoints", "last.pt")


def damaged_path(last: str) -> str:
    """Where an unreadable ``last.pt`` is moved aside (kept for inspection)."""
    return os.path.splitext(last)[0] + ".damaged.pt"


def checkpoint_files(out_dir: str) -> list[str]:
    """Every checkpoint file of the run in ``out_dir`` that exists: last, previous, damaged, then the
    periodic ones oldest first."""
    last = last_path(out_dir)
    named = [p for p in (last, previous_path(last), damaged_path(last)) if os.path.isfile(p)]
    return named + [p for _, p in periodic_checkpoints(os.path.dirname(last))]


def find_resume_checkpoint(out_dir: str) -> Optional[str]:
    """``checkpoints/last.pt`` under ``out_dir``, else its ``.prev.pt``, else None."""
    last = last_path(out_dir)
    for path in (last, previous_path(last)):
        if os.path.isfile(path):
            return path
    return None


def load_resume_checkpoint(out_dir: str, log=print, quarantine: bool = True) -> Optional[tuple[str, dict]]:
    """(path, state) of the newest readable checkpoint under ``out_dir`` (``last.pt``, else its ``.prev.pt``,
    else the newest periodic ``step_N.pt``, with a warning), None when there is none; CheckpointError when
    every candidate is unreadable.

    With ``quarantine`` an unreadable ``last.pt`` is renamed ``last.damaged.pt`` (kept for inspection) before
    resuming from an older one: otherwise the next save would rotate the damaged file over the good ``.prev``."""
    last = last_path(out_dir)
    periodic = [path for _, path in reversed(periodic_checkpoints(os.path.dirname(last)))]
    errors = []
    for path in (last, previous_path(last), *periodic):
        if not os.path.isfile(path):
            if path == last and (os.path.isfile(previous_path(last)) or periodic):
                errors.append(f"checkpoint {last} is missing (the run was stopped while replacing it?)")
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            note = ""
            if quarantine and path != last and os.path.isfile(last):
                damaged = damaged_path(last)
                os.replace(last, damaged)
                note = f" (the damaged file is kept as {damaged})"
            log(f"fastgan: warning: {errors[0]}; falling back to the previous good checkpoint {path}{note}")
        return path, state
    if errors:
        raise CheckpointError("; ".join(errors))
    return None


# ----------------------------------------------------------------------------
# For sample / eval
# ----------------------------------------------------------------------------

def load_generator(checkpoint_path: str, device="cpu", *, ema: bool = True, impl: Optional[str] = None):
    """The generator of a ``fastgan train`` checkpoint, rebuilt from its stored spec, in eval mode.

    Args:
        checkpoint_path: a ``.pt`` file written by the trainer (or a run directory: its
            ``checkpoints/last.pt``).
        device: where to put it ("cpu", "cuda", "auto", a torch.device).
        ema: use the EMA weights when the run kept an EMA of G (default).
        impl: backend of the fused layers ("auto", "ref", "triton", "cuda"); default: "auto" on CPU
            and CUDA alike (the checkpoint's own setting is ignored so it loads on any machine).

    Returns ``fastgan.train.models.Generator``: ``g(z)`` (or ``g(z, labels)`` when ``g.num_classes``)
    with attributes ``nz``, ``z_dist`` ("normal" / "uniform"), ``num_classes``, ``data_kind``
    ("image" / "toy"), ``output`` and ``g.to_data_range(x)``; plus ``g.checkpoint_step`` and
    ``g.data_info`` (dataset, channels, image_size, num_classes) and ``g.uses_ema``.  Use :func:`generate` to draw samples.
    Raises CheckpointError for a file it cannot use.
    """
    from .models import build_generator

    if os.path.isdir(checkpoint_path):
        import warnings

        found = load_resume_checkpoint(checkpoint_path, log=lambda msg: warnings.warn(msg, stacklevel=2),
                                       quarantine=False)
        if found is None:
            raise CheckpointError(f"no checkpoints/last.pt under {checkpoint_path}")
        checkpoint_path, state = found
    else:
        state = load_checkpoint(checkpoint_path)
    dev = resolve_device(device)
    try:
        g = build_generator(state["spec"]["generator"], impl=impl or "auto")
        weights = state["ema"] if ema and state.get("ema") is not None else state["generator"]
        g.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint_path}: cannot rebuild the generator ({str(exc).splitlines()[0]})") \
            from None
    g.to(dev).eval()
    g.checkpoint_step = int(state.get("step", 0))
    g.uses_ema = bool(ema and state.get("ema") is not None)
    g.data_info = dict(state["spec"].get("data", {}))
    ref = state.get("fixed", {}).get("vbn_z")
    from ..models import has_vbn

    if has_vbn(g):
        if ref is None:
            raise CheckpointError(f"{checkpoint_path}: the generator uses virtual batch norm but the checkpoint "
                                  "has no reference batch")
        _vbn_reference(g, ref.to(dev), state["fixed"].get("vbn_labels"))
    return g


@torch.no_grad()
def _vbn_reference(g, z_ref: torch.Tensor, labels=None) -> None:
    from ..nn import virtual_batch_reference

    with virtual_batch_reference(g):
        g(z_ref, None if labels is None else labels.to(z_ref.device))


@torch.no_grad()
def generate(generator, n: int, *, seed: Optional[int] = None, labels: Optional[torch.Tensor] = None,
             batch_size: int = 256, device=None) -> torch.Tensor:
    """``n`` samples from a generator of :func:`load_generator`, on the CPU, in the data's range.

    Images come back as float32 (n, C, H, W) in [-1, 1] (what ``fastgan.data.load_dataset`` yields), toy
    data as (n, 2) points.  ``seed`` fixes z (and labels); a conditional generator gets ``labels`` or
    uniformly random classes.
    """
    from .tricks.latent import sample_labels, sample_z

    dev = next(generator.parameters()).device if device is None else torch.device(device)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = []
    done = 0
    while done < n:
        m = min(batch_size, n - done)
        z = sample_z(m, generator.nz, generator.z_dist, generator=gen).to(dev)
        y = None
        if generator.num_classes:
            y = (labels[done:done + m] if labels is not None
                 else sample_labels(m, generator.num_classes, generator=gen)).to(dev)
        out.append(generator.to_data_range(generator(z, y)).float().cpu())
        done += m
    return torch.cat(out, 0)
