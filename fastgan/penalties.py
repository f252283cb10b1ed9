"""Gradient penalties for GAN critics: WGAN-GP, WGAN-LP, R1, R2, DRAGAN.

``gradient_penalty(critic, real, fake, kind)`` builds the points where the
critic is penalised, runs the critic, takes the gradient g_i of its output
for each sample w.r.t. that sample's input (``create_graph=True``, so the
penalty trains the critic through its double backward), and reduces the
per-sample L2 norms of g (over all non-batch dims, float32) to a scalar:

============  =====================================  ======================  ========
kind          value                                  points                  weight
============  =====================================  ======================  ========
``wgan-gp``   weight * mean_i (||g_i|| - 1)^2        eps real + (1-eps) fake  10
``wgan-lp``   weight * mean_i max(0, ||g_i|| - 1)^2  eps real + (1-eps) fake  10
``r1``        weight / 2 * mean_i ||g_i||^2          real                    10 (gamma)
``r2``        weight / 2 * mean_i ||g_i||^2          fake                    10 (gamma)
``dragan``    weight * mean_i (||g_i|| - 1)^2        perturbed reals         10
============  =====================================  ======================  ========

References: Gulrajani et al. 2017 (WGAN-GP, lambda = 10, eps ~ U[0, 1) per
sample); Petzka et al. 2018 (WGAN-LP); Mescheder et al. 2018 (R1 / R2,
gamma / 2 * E||grad||^2); Kodali et al. 2017 (DRAGAN).  DRAGAN's points
follow the authors' code (github.com/kodalinaveen3/DRAGAN, ``DRAGAN.ipynb``:
``get_perturbed_batch`` and the penalty cell): ``x_p = x + 0.5 * x.std() *
U[0, 1)`` with the population std of the whole batch (numpy's ``std``), then
``x + alpha * (x_p - x)`` with alpha ~ U[0, 1) per sample, lambda = 10.  The
1 in the table is ``center`` (changeable).

The interpolation and the norm + penalty reduction (with its backward) are
fastgan's fused ops (``fastgan.ops.interpolate``, ``fastgan.ops.penalty_from_grad``);
with critics made of fastgan layers the whole penalty step -- forward,
backward with ``create_graph=True``, and the double backward that
``penalty.backward()`` runs -- goes through fastgan kernels.

Per-sample gradients are those of ``critic(x).sum()``: exact when the
critic treats samples independently (no batch norm; the WGAN-GP paper's
advice -- use ``LayerNormAct2d`` / ``GroupNormAct`` / ``InstanceNormAct2d``).
A critic with several outputs per sample (a patch critic) is penalised on the
sum of a sample's outputs.

Mixed precision
---------------
Norms accumulate in float32 whatever the dtypes, and the critic's output is
cast to float32 before it is summed.  Under ``torch.autocast`` with a
``GradScaler``, pass ``scaler=``: the output is scaled before the gradient
is taken (so float16 gradients do not underflow) and the gradient is
unscaled before its norm, as in PyTorch's AMP recipe "Gradient penalty"
(docs: Automatic Mixed Precision examples)::

    with torch.autocast("cuda", dtype=torch.float16):
        loss = critic(fake).mean() - critic(real).mean()
        loss = loss + gradient_penalty(critic, real, fake, scaler=scaler)
    scaler.scale(loss).backward()
    scaler.step(opt); scaler.update()

The scale is read as a tensor (no host synchronisation).  If the scaled
gradient overflows, the penalty is inf, the parameters' gradients are not
finite and ``scaler.step`` skips the step, as the recipe intends.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

from ._validation import is_finite_number
from .ops.penalty import interpolate, penalty_from_grad

__all__ = ["KINDS", "gradient_penalty", "penalty_from_outputs", "perturb", "LazyRegularizer"]

# kind -> (where the critic is penalised, reduction mode, default weight, factor on the weight)
KINDS = {
    "wgan-gp": ("interpolate", "two-sided", 10.0, 1.0),
    "wgan-lp": ("interpolate", "one-sided", 10.0, 1.0),
    "r1": ("real", "squared", 10.0, 0.5),
    "r2": ("fake", "squared", 10.0, 0.5),
    "dragan": ("perturb", "two-sided", 10.0, 1.0),
}

OutputSelector = Union[int, str, Callable[[Any], torch.Tensor], None]


def _check_kind(kind: str):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    return KINDS[kind]


def _check_input(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a batch (N, ...) with N >= 1, got shape {tuple(t.shape)}")


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _select_output(out, output: OutputSelector) -> torch.Tensor:
    """The real/fake score tensor of a critic's output (a tensor, tuple, list or dict)."""
    if callable(output):
        out = output(out)
    elif isinstance(out, (tuple, list)):
        out = out[0 if output is None else output]
    elif isinstance(out, dict):
        if output is None or isinstance(output, int):
            raise ValueError("the critic returned a dict: pass output=<key> (or a callable) to choose its score")
        out = out[output]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the critic's selected output must be a tensor, got {type(out).__name__}")
    return out


def _scale_tensor(scaler, device) -> Optional[torch.Tensor]:
    """The GradScaler's current scale as a 0-dim float32 tensor (no host sync), or None."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    return scaler.scale(torch.ones((), dtype=torch.float32, device=device))


def perturb(real: torch.Tensor, scale: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DRAGAN's perturbed batch: ``real + scale * real.std() * U[0, 1)`` (population std
    of the whole batch, as numpy's ``std`` in the authors' ``get_perturbed_batch``)."""
    acc = _acc_dtype(real)
    noise = torch.rand(real.shape, generator=generator, device=real.device, dtype=acc)
    std = real.detach().to(acc).std(unbiased=False)
    return (real.to(acc) + scale * std * noise).to(real.dtype)


def _check_weight(weight, default: float) -> float:
    """A penalty's weight as a float: None for ``default``, else a finite number >= 0 (a negative weight would
    reward the critic for the very gradients the penalty is there to damp)."""
    if weight is None:
        return default
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a float (or None for the default {default}), got {type(weight).__name__}")
    if not is_finite_number(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0 (or None for the default {default}), got {weight}")
    return float(weight)


def penalty_from_outputs(outputs: torch.Tensor, inputs: torch.Tensor, kind: str = "r1",
                         weight: Optional[float] = None, *, center: float = 1.0, scaler=None,
                         create_graph: bool = True, return_norms: bool = False, impl: str = "auto"):
    """The penalty of ``kind`` from critic scores ``outputs`` already computed on ``inputs``.

    For a critic evaluated once for both its loss and the penalty (StyleGAN2's
    R1: ``real.requires_grad_()``, ``scores = critic(real)``).  outputs: (N,)
    or (N, ...) scores, summed per sample; inputs: the (N, ...) tensor they
    were computed from, which must require grad."""
    _, mode, default_weight, factor = _check_kind(kind)
    weight = _check_weight(weight, default_weight)
    _check_input("inputs", inputs)
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"outputs must be a tensor, got {type(outputs).__name__}")
    if outputs.dim() == 0 or outputs.shape[0] != inputs.shape[0]:
        raise ValueError(f"the critic must return one score (or a row of scores) per sample: expected "
                         f"{inputs.shape[0]} rows, got shape {tuple(outputs.shape)}")
    if not inputs.requires_grad:
        raise ValueError("inputs must require grad (the gradient of the scores w.r.t. them is penalised)")
    total = outputs.float().sum()
    if not total.requires_grad:  # (autograd.grad would raise a RuntimeError that names no argument)
        raise ValueError("the critic's output does not depend on its input: there is no gradient to penalise "
                         "(was it computed under torch.no_grad(), or detached?)")
    scale = _scale_tensor(scaler, total.device)
    if scale is not None:
        total = total * scale
    (grad,) = torch.autograd.grad(total, inputs, create_graph=create_graph, allow_unused=True)
    if grad is None:
        raise ValueError("the critic's output does not depend on its input: there is no gradient to penalise")
    if scale is not None:
        grad = grad / scale.to(grad.device)
    value, norms = penalty_from_grad(grad, mode, center, return_norms=True, impl=impl)
    penalty = value * (weight * factor)
    return (penalty, norms) if return_norms else penalty


def gradient_penalty(critic: Callable, real: torch.Tensor, fake: Optional[torch.Tensor] = None,
                     kind: str = "wgan-gp", weight: Optional[float] = None, *,
                     epsilon: Union[torch.Tensor, float, None] = None, labels: Any = None,
                     critic_kwargs: Optional[dict] = None, output: OutputSelector = None, center: float = 1.0,
                     perturb_scale: float = 0.5, scaler=None, detach_inputs: bool = True,
                     create_graph: bool = True, return_norms: bool = False,
                     generator: Optional[torch.Generator] = None, impl: str = "auto"):
    """The gradient penalty ``kind`` of ``critic``: a 0-dim float32 tensor (float64 for float64 inputs).

    Args:
        critic: called as ``critic(x)``, ``critic(x, labels)`` when labels are
            given, plus ``**critic_kwargs``.
        real, fake: (N, ...) batches of one shape; ``fake`` is needed by
            wgan-gp, wgan-lp and r2.
        kind: ``"wgan-gp" | "wgan-lp" | "r1" | "r2" | "dragan"`` (the table in this module's docstring).
        weight: lambda (gamma for r1 / r2, applied as gamma / 2); default 10.
        epsilon: interpolation weights (one per sample, or a float) for
            wgan-gp / wgan-lp (the weight of ``real``) and dragan (the weight
            of the perturbed batch); default U[0, 1) per sample.
        labels, critic_kwargs: conditioning passed to the critic.
        output: which part of a tuple / list / dict output is the real/fake
            score (an index, a key or a callable); default: element 0 of a
            tuple (e.g. AC-GAN ``(score, class_logits)``).
        center: the target norm of wgan-gp / wgan-lp / dragan (1).
        perturb_scale: DRAGAN's noise scale (0.5, the authors' code).
        scaler: a ``torch.amp.GradScaler`` under mixed precision (see the module doc).
        detach_inputs: penalise at points detached from real / fake (default),
            so the penalty trains only the critic.
        create_graph: keep the graph of the gradient (needed to train on the
            penalty; False only to monitor it).
        return_norms: also return the detached (N,) per-sample gradient norms.
        generator: a ``torch.Generator`` for epsilon and the DRAGAN noise.
        impl: backend of the fused pieces (``"auto" | "ref" | "triton" | "cuda"``);
            the critic's layers use their own ``impl``.
    """
    where, _, default_weight, _ = _check_kind(kind)
    if not callable(critic):
        raise TypeError(f"critic must be callable (a module or a function of x), got {type(critic).__name__}")
    _check_weight(weight, default_weight)  # before the critic runs: a bad weight costs no forward pass
    _check_input("real", real)
    if where in ("interpolate", "fake"):
        if fake is None:
            raise ValueError(f"kind={kind!r} needs fake samples (fake=...)")
        _check_input("fake", fake)
        if fake.shape != real.shape:
            raise ValueError(f"fake must have real's shape {tuple(real.shape)}, got {tuple(fake.shape)}")
        if fake.device != real.device:
            raise ValueError(f"real is on {real.device} but fake is on {fake.device}; put them on one device")
    n = real.shape[0]

    def source(t):
        return t.detach() if detach_inputs else t

    def draw_epsilon():
        if epsilon is not None:
            return epsilon
        return torch.rand(n, generator=generator, device=real.device, dtype=_acc_dtype(real))

    if where == "interpolate":
        x = interpolate(source(real), source(fake).to(real.dtype), draw_epsilon(), impl=impl)
    elif where == "perturb":
        base = source(real)
        x = interpolate(perturb(base, perturb_scale, generator), base, draw_epsilon(), impl=impl)
    else:
        x = source(real if where == "real" else fake)
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)

    args = (x,) if labels is None else (x, labels)
    out = _select_output(critic(*args, **(critic_kwargs or {})), output)
    return penalty_from_outputs(out, x, kind, weight, center=center, scaler=scaler, create_graph=create_graph,
                                return_norms=return_norms, impl=impl)


class LazyRegularizer:
    """Lazy regularisation (StyleGAN2, Karras et al. 2020, appendix B): apply the
    penalty only every ``every`` critic steps, with its weight multiplied by
    ``every`` so that its average strength is unchanged.

    ``reg(critic, real, fake, ...)`` returns the scaled penalty on the steps
    it is due (the first call, then every ``every``-th) and ``None`` on the
    others, counting calls itself (or pass ``step=``)::

        reg = LazyRegularizer("r1", every=16, weight=10.0)
        ...
        loss = d_loss
        if (penalty := reg(critic, real)) is not None:
            loss = loss + penalty

    StyleGAN2 also corrects the optimiser for the extra gradient steps:
    ``lr * k / (k + 1)`` and ``beta ** (k / (k + 1))`` with k = ``every``
    (``optimizer_hparams``).
    """

    def __init__(self, kind: str = "r1", every: int = 16, weight: Optional[float] = None, **penalty_kwargs):
        _check_kind(kind)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        _check_weight(weight, KINDS[kind][2])  # refused here rather than at the first due step
        self.kind, self.every, self.weight = kind, every, weight
        self.penalty_kwargs = penalty_kwargs
        self.calls = 0

    def due(self, step: Optional[int] = None) -> bool:
        """Whether the penalty applies at ``step`` (default: the next call)."""
        return (self.calls if step is None else int(step)) % self.every == 0

    def __call__(self, critic, real, fake=None, *, step: Optional[int] = None, **kwargs):
        due = self.due(step)
        if step is None:
            self.calls += 1
        if not due:
            return None
        weight = KINDS[self.kind][2] if self.weight is None else float(self.weight)
        result = gradient_penalty(critic, real, fake, self.kind, weight * self.every,
                                  **{**self.penalty_kwargs, **kwargs})
        return result

    def optimizer_hparams(self, lr: float, betas=(0.0, 0.99)) -> tuple[float, tuple[float, ...]]:
        """StyleGAN2's correction for lazy regularisation: (lr * r, betas ** r), r = k / (k + 1)."""
        ratio = self.every / (self.every + 1)
        return lr * ratio, tuple(b ** ratio for b in betas)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def __repr__(self) -> str:
        return f"LazyRegularizer(kind={self.kind!r}, every={self.every}, weight={self.weight})"
