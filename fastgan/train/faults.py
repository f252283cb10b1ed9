"""What the trainer does when a step goes wrong: non-finite values and running out of memory.

* Non-finite values.  ``Trainer._update`` skips an optimiser step whose loss
  or gradient is NaN / Inf, so the weights never see it; but the forward
  passes of that step already updated the models' buffers (batch-norm
  running statistics), and a NaN batch poisons them.  :class:`BufferGuard`
  copies every buffer before a step and puts them back when the step turns
  out non-finite, so a skipped step leaves G and D exactly as they were.
* Out of memory.  :func:`is_out_of_memory` recognises ``torch.OutOfMemoryError``
  and the older ``RuntimeError("... out of memory ...")`` spellings;
  :func:`out_of_memory_message` says what to change.
"""
from __future__ import annotations

import torch

_OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS))


def out_of_memory_message(cfg, step: int, exc: BaseException, where: str) -> str:
    """One line: what ran out, during what, and what to try (resumable options first)."""
    r, m = cfg.run, cfg.model
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    hints = []
    if r.amp == "off":
        hints.append("mixed precision (--resume --set run.amp=bf16)")
    if where != "the training step" and r.eval_every:
        hints.append(f"fewer evaluation samples (--set run.eval_samples={max(10, r.eval_samples // 4)})")
    hints.append(f"a smaller batch (a new run with --batch-size {max(2, r.batch_size // 2)})")
    if cfg.resolved_arch() == "dcgan":
        hints.append(f"narrower models (model.ngf / model.ndf, now {m.ngf} / {m.ndf})")
    if m.minibatch == "discrimination":
        hints.append("model.minibatch=stddev (minibatch discrimination is O(N^2))")
    hints.append("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation")
    return (f"out of memory in {where} at step {step} (batch {r.batch_size}, amp {r.amp}, device {r.device}): "
            f"{first}. Try: {'; '.join(hints)}")


class BufferGuard:
    """Copies of every buffer of some modules (running statistics, counters), to put back after a non-finite step.

    Made once per run: ``save()`` before each step refreshes the copies with torch's multi-tensor copy (a
    launch or two on a GPU rather than one per buffer, in every step); they are allocated again only
    when the modules' buffers are other tensors than last time (a module moved, or a buffer replaced).
    """

    def __init__(self, *modules):
        self.modules = modules
        self._buffers: list = []
        self._groups: list = []  # (buffers, copies) per (device, dtype): the multi-tensor copy's fast path
        self.save()

    def guards(self, *modules) -> bool:
        """Whether this guard is for exactly these module objects."""
        return len(modules) == len(self.modules) and all(a is b for a, b in zip(modules, self.modules))

    @torch.no_grad()
    def save(self) -> None:
        buffers = [b for mod in self.modules for b in mod.buffers()]
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            groups: dict = {}
            for b in buffers:
                groups.setdefault((b.device, b.dtype), []).append(b)
            self._buffers = buffers
            self._groups = [(group, [b.detach().clone() for b in group]) for group in groups.values()]
            return
        for group, copies in self._groups:
            torch._foreach_copy_(copies, group)

    @torch.no_grad()
    def restore(self) -> None:
        for group, copies in self._groups:
            torch._foreach_copy_(group, copies)


def save_after_fault(trainer, status: str, in_step: bool):
    """The checkpoint written when a run stops on a fault; returns its path or None.

    ``diverged``: the skipped steps left the weights, optimiser states and buffers as they were after the last
    finite update, so that state is written to ``last.pt`` (the older one becomes ``last.prev.pt``), with the
    non-finite counter reset so a resumed run gets its full patience.  ``out_of_memory``: written only when
    the OOM came between steps (sampling, evaluation, logging); a step cut short is half applied (D updated,
    G not), so then the last good checkpoint stays as it is.
    """
    kept = trainer.kept_checkpoint()
    if status == "out_of_memory":
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if in_step:
            trainer._write(f"[fastgan train] the step in progress was cut short, so no checkpoint is written for "
                           f"it; the last good checkpoint stays: {kept}")
            return None
    if status == "diverged":
        trainer.monitor.nonfinite_run = 0
    try:
        path = trainer.save()
    except Exception as exc:  # noqa: BLE001 - only an OOM while saving is expected here
        if not is_out_of_memory(exc):
            raise
        trainer._write(f"[fastgan train] could not write a checkpoint (out of memory again); the last good "
                       f"checkpoint stays: {kept}")
        return None
    if path:
        what = "the state after the last finite update" if status == "diverged" else "the state before the fault"
        trainer._write(f"[fastgan train] wrote {path}: {what} (step {trainer.step})")
    return path
