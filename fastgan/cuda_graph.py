"""Capture a whole GAN training step in one CUDA graph and replay it.

At small batch a DCGAN iteration is a few hundred short kernels, and the time
goes to launching them from Python, not to running them.  A CUDA graph
records the launches once and replays them with one call.  Every fastgan op
is capturable (no host synchronisation, no allocation whose size depends on
data), so a step built from fastgan layers, ``fastgan.penalties`` (double
backward included) and capturable optimisers can be captured whole.
(``fastgan train --set cuda_graph=true`` does it for the trainer's own step:
``fastgan/train/graph_step.py``.)

Usage::

    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=True)
    real = torch.empty(batch, 3, 64, 64, device="cuda")        # static input buffer

    def step():
        ...  # D step and G step reading ``real``; returns the losses as tensors

    graphed = GraphedStep(step, optimizers=(opt_g, opt_d))
    for batch in loader:
        real.copy_(batch, non_blocking=True)
        loss_d, loss_g = graphed()                             # replayed after the first call

Rules the step must follow (the usual CUDA-graph rules, checked where
possible): inputs live in tensors created before the capture and are updated
in place; no ``.item()`` / ``print(tensor)`` / Python control flow on tensor
values inside the step; random numbers come from torch's CUDA generator
(``torch.randn(..., device="cuda")`` is graph-safe, replays draw new
numbers); autocast runs with ``cache_enabled=False``; the optimisers are
capturable (``capturable=True`` for Adam/AdamW).  The returned tensors are
the graph's static outputs: each replay overwrites them, so copy what you
keep.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

__all__ = ["GraphedStep", "check_capturable_optimizers"]


def check_capturable_optimizers(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Raise ``ValueError`` naming the optimiser whose update cannot be captured."""
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizers[{i}] must be a torch.optim.Optimizer, got {type(opt).__name__}")
        # Adam-family optimisers keep their step count on the host unless capturable=True,
        # and then read it back every step: a host sync that capture refuses.
        for g, group in enumerate(opt.param_groups):
            if "capturable" in group and not group["capturable"]:
                raise ValueError(f"optimizers[{i}] ({type(opt).__name__}) param_groups[{g}] has capturable=False; "
                                 f"create it with capturable=True to capture its step in a CUDA graph")


class GraphedStep:
    """``step()`` captured in a CUDA graph on the first call, replayed on every later call.

    ``warmup`` eager calls run first on a side stream (they compile Triton
    kernels, let cuDNN pick algorithms and create the optimisers' state, none
    of which may happen during the capture); they are real training steps.
    ``optimizers`` are checked for capturability up front.  ``pool`` shares a
    memory pool between graphs (``torch.cuda.graph_pool_handle()``).
    """

    def __init__(self, step: Callable[[], object], *, optimizers: Iterable[torch.optim.Optimizer] = (),
                 warmup: int = 3, device: Optional[torch.device] = None, pool=None):
        if not callable(step):
            raise TypeError(f"step must be callable, got {type(step).__name__}")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (optimiser state and Triton kernels are created "
                             f"before the capture), got {warmup!r}")
        if not torch.cuda.is_available():
            raise RuntimeError("GraphedStep needs a CUDA device: CUDA graphs do not exist on CPU")
        self.optimizers = tuple(optimizers)
        check_capturable_optimizers(self.optimizers)
        self.step = step
        self.warmup = warmup
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device must be a CUDA device, got {self.device}")
        self.pool = pool
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs = None
        self.replays = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _zero_grads(self) -> None:
        # Gradients must be allocated inside the capture (from the graph's pool) so that
        # every replay writes them at the same addresses.
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def capture(self):
        """Warm up, then record one step; returns the outputs of the warm-up's last call."""
        if self.graph is not None:
            raise RuntimeError("GraphedStep.capture: already captured")
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    out = self.step()
            torch.cuda.current_stream().wait_stream(side)
            self._zero_grads()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs = self.step()
            self.graph = graph
        return out

    def __call__(self):
        if self.graph is None:
            return self.capture()
        self.graph.replay()
        self.replays += 1
        return self.outputs
