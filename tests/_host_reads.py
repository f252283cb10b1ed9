"""A dispatch mode that counts the operators reading a device value back on the host (each waits for all the
work queued on the GPU), shared by the trainer tests that keep a step's reads few or none."""
from torch.utils._python_dispatch import TorchDispatchMode

READS = ("_local_scalar_dense", "item", "is_nonzero", "equal")


class HostReads(TorchDispatchMode):
    """``seen``: the reading operators dispatched inside the mode, in order.  ``from_host``: also count tensors made
    from host data (``lift_fresh``: a host-to-device copy on a GPU, which a CUDA graph capture refuses).
    ``ignore(*optimizers)``: not counting what their ``step()`` reads (Adam's CPU step reads its step counters)."""

    def __init__(self, from_host: bool = False):
        super().__init__()
        self.names = READS + (("lift_fresh",) if from_host else ())
        self.seen: list = []
        self.paused = False

    def ignore(self, *optimizers) -> "HostReads":
        for opt in optimizers:
            opt.register_step_pre_hook(lambda *_: setattr(self, "paused", True))
            opt.register_step_post_hook(lambda *_: setattr(self, "paused", False))
        return self

    @property
    def count(self) -> int:
        return len(self.seen)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in self.names and not self.paused:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))
