"""Which GPU the Triton kernels are sized for.

Launch configurations (programs per reduction, tile shapes) depend on the
GPU: its multiprocessor count for CUDA tensors.  Under the interpreter there
is no GPU and the kernels are sized for numpy instead (few programs, big
tiles).  ``fastgan.kernels.compile_check`` compiles every kernel for a real
GPU target on a machine without one; while it runs, ``compile_only`` holds
the multiprocessor count of that target, so CPU tensors get the GPU's
configurations and ``impl="triton"`` accepts them without the interpreter.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

# Set only by compile_check (never by user code): the SM count to size CPU tensors' launches for.
compile_only: Optional[int] = None


def multiprocessors(t: torch.Tensor) -> Optional[int]:
    """The SM count the launch for ``t`` is sized for; None under the interpreter."""
    if t.is_cuda:
        return _cuda_multiprocessors(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return compile_only


@functools.lru_cache(maxsize=None)
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
