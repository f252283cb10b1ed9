"""``run.cuda_graph``: the trainer's step captured in one CUDA graph and replayed (issue 10).

At batch 64 a DCGAN step on an H100 is bound by the host issuing a few hundred
short kernels, not by the GPU running them; replaying a captured step issues
them with one call (``benchmarks/bench_train_step.py``'s graph cases time the
same for a hand-written step: ``fastgan.cuda_graph.GraphedStep``).  This is
the trainer's own step, captured:

* The first ``run.cuda_graph_warmup`` steps run eagerly, on the stream that
  will capture (cuDNN's autotuner, Triton's compilation, the optimisers'
  state and the buffer guard's copies are made there, none of which a capture
  may do), and so do the steps before ``tricks.ema_start`` and
  ``optim.d_pretrain``, after which the step's Python no longer changes from
  one step to the next.
* Then one step is captured, reading its ``n_critic`` real batches (and their
  labels) from buffers made for it; every later step copies the stream's next
  batches into those buffers (device-to-device) and replays the graph.  The
  statistics and the finiteness flags are the graph's outputs, overwritten by
  each replay and read back as in an eager step.
* What a capture needs of the step the trainer gives in this mode: no host
  reads (the fused Adam skips a non-finite update on the device), capturable
  optimisers, autocast without its weight cache.  Options that make the step
  differ on the host from one step to the next, or read values back, are
  refused by :func:`config_errors`, naming each.

Random numbers (z, labels, the penalty's interpolation weights) come from
torch's CUDA generator, which a replay advances as the eager step would; a
captured run is not promised the bits of the same run uncaptured.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def config_errors(cfg) -> list[str]:
    """What ``run.cuda_graph`` cannot capture, one message per option set."""
    r, o, lo, t = cfg.run, cfg.optim, cfg.loss, cfg.tricks
    if not r.cuda_graph:
        return []
    if r.device == "cpu":
        return ["run.cuda_graph: CUDA graphs need a CUDA device (run.device is 'cpu')"]
    why = {
        "run.amp": ("fp16's gradient scaler reads its overflow check back on the host; use bf16 or off",
                    r.amp == "fp16"),
        "run.compile_g": ("torch.compile manages CUDA graphs of its own", r.compile_g),
        "optim.fused_adam": ("a captured step must skip a non-finite update on the device, which the fused Adam "
                             "does", o.fused_adam == "off"),
        "optim.optimizer_g / optimizer_d": ("SGD skips a non-finite update only after a host read; use adam",
                                            "sgd" in (o.optimizer_g, o.optimizer_d)),
        "optim.balance": ("loss balancing decides each update on a loss read back on the host", o.balance),
        "tricks.instance_noise": ("its decaying strength changes the step every step", t.instance_noise > 0),
        "tricks.replay_size": ("the replay buffer reads its fakes' finiteness back and changes size on the host",
                               t.replay_size > 0),
        "tricks.swap_prob": ("snapshot swaps are drawn on the host every step", t.swap_prob > 0),
        "loss.historical_averaging": ("it folds in each update once read back as finite",
                                      lo.historical_averaging > 0),
        "loss.penalty_every": ("a lazy penalty runs on some steps and not others", lo.penalty != "none"
                               and lo.penalty_every > 1),
        "loss.pixel_decay": ("the pixel loss weight falls with the step count, and a graph would keep the captured "
                             "step's weight", lo.pixel_loss != "none" and lo.pixel_decay > 0),
        "loss.unrolled_steps": ("the unrolled D is copied and stepped on the host", lo.unrolled_steps > 0),
        "loss.hybrid": ("the encoder's update reads G's finiteness back", lo.hybrid != "none"),
        "loss.semi_supervised": ("its labelled batches come from a second stream", lo.semi_supervised),
    }
    return [f"{key}: not with run.cuda_graph ({reason})" for key, (reason, bad) in why.items() if bad]


class _GraphRecorder:
    """One ``torch.cuda.CUDAGraph``: ``warm(fn)`` runs ``fn()`` eagerly on the stream that will capture,
    ``record(fn)`` captures ``fn()`` (running nothing) and returns its outputs, which each ``replay()``
    overwrites in place."""

    def __init__(self, device: torch.device):
        self.device = device
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.stream: Optional[torch.cuda.Stream] = None

    def warm(self, fn: Callable[[], dict]) -> dict:
        # PyTorch's recipe: warm-up iterations on a side stream, the one the capture will use here, so that
        # what libraries set up per stream (cuBLAS workspaces) exists before the capture
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        return out

    def record(self, fn: Callable[[], dict]) -> dict:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader's pin-memory thread may allocate pinned memory meanwhile, which the
        # default ("global") mode would count against this capture
        with torch.cuda.device(self.device), torch.cuda.graph(self.graph, stream=self.stream,
                                                              capture_error_mode="thread_local"):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


class CapturedStep:
    """The trainer's step, eager for its first steps, then captured once and replayed.

    ``step_fn(batches)``: one training step's work on the given ``n_critic`` (batch, labels) pairs, returning
    its statistics as tensors (the trainer's ``_step_tensors``); ``ready()``: whether the step's Python no
    longer changes from step to step (warm-up done, EMA started, D's pre-training over).  ``recorder``
    (``warm`` / ``record`` / ``replay``): :class:`_GraphRecorder` by default; the CPU tests pass one that
    replays by calling the recorded step eagerly.
    """

    def __init__(self, step_fn: Callable[[list], dict], ready: Callable[[int], bool], device: torch.device,
                 recorder=None):
        self.step_fn, self.ready = step_fn, ready
        self.recorder = recorder if recorder is not None else _GraphRecorder(device)
        self.inputs: Optional[list] = None
        self.outputs: Optional[dict] = None
        self.eager_steps = 0
        self.replays = 0

    @property
    def captured(self) -> bool:
        return self.outputs is not None

    def __call__(self, batches: list) -> dict:
        if not self.captured and not self.ready(self.eager_steps):
            self.eager_steps += 1
            return self.recorder.warm(lambda: self.step_fn(batches))
        if not self.captured:
            self._capture(batches)
        for (x_in, y_in), (x, y) in zip(self.inputs, batches):
            x_in.copy_(x, non_blocking=True)
            y_in.copy_(y, non_blocking=True)
        self.recorder.replay()
        self.replays += 1
        return self.outputs

    def reset(self) -> None:
        """Forget the captured step: the next steps warm up and capture again.  A graph replays on the tensors
        it was captured with, so whatever replaces them (an optimiser's ``load_state_dict`` makes new state
        tensors) must call this, or every replay would go on updating the old ones."""
        self.inputs = self.outputs = None
        self.eager_steps = self.replays = 0

    def _capture(self, batches: list) -> None:
        # the graph's own input buffers: the stream's batches are views of its data or fresh tensors each step
        self.inputs = [(x.clone(), y.clone()) for x, y in batches]
        try:
            self.outputs = self.recorder.record(lambda: self.step_fn(self.inputs))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RuntimeError(f"run.cuda_graph: the training step could not be captured in a CUDA graph "
                               f"({type(exc).__name__}: {first}); train with run.cuda_graph=false") from exc
