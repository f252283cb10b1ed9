"""The failure watch: known GAN failure modes, reported as they happen with a one-line hint.

======================  ==================================================================================
kind                    fires when
======================  ==================================================================================
``d_loss_zero``         D's loss stays within ``d_loss_floor`` of the least it can be for ``d_loss_patience``
                        steps in a row (minimax / non-saturating / LSGAN / hinge; the least is 0 but with
                        label smoothing, random or flipped labels: ``losses.d_loss_minimum``): D wins and
                        G's gradients vanish.
``grad_norm``           the total gradient norm of D or G exceeds ``grad_norm_limit`` (100).
``collapse``            over the last ``collapse_window`` log points G's loss falls while the sample quality
                        proxy degrades: sample diversity (mean pairwise distance of a fake batch over that
                        of a real batch) falls and ends below ``diversity_floor``, or (toy data) the number
                        of modes covered falls; or D is fooled (D(G(z)) ~ D(x)) by low-diversity samples.
``low_diversity``       the sample diversity ratio (fake / real mean pairwise distance) stays below
                        ``collapse_diversity`` for ``collapse_patience`` log points in a row, once
                        ``collapse_after`` steps are done (an untrained G is not diverse yet).
``class_collapse``      (``class_histogram`` on) fewer than ``class_floor`` of the classes hold their share
                        of the classified fixed-z samples, for ``collapse_patience`` log points in a row.
``nonfinite``           NaN / Inf in a loss or a gradient: that update is skipped; after
                        ``nonfinite_patience`` in a row the run stops (raises :class:`TrainingDiverged`)
                        and the last good checkpoint is kept.
======================  ==================================================================================

Each report is a dict {step, kind, message} handed to ``report`` (the trainer
prints it and appends it to ``events.jsonl``); the same kind is repeated at
most every ``hint_every`` steps.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

# kind -> (what it means, [(a remedy, whether it is one for this run: a function of the training config)]);
# a remedy the run already uses is left out of the hint (a WGAN-GP run is not told to add a gradient penalty)
_ALWAYS = None
_NO_PENALTY = ("a gradient penalty", lambda c: c.loss.penalty == "none")
_NO_PACKING = ("PacGAN packing", lambda c: c.tricks.pack == 1)
_NO_MODE_SEEKING = ("the mode-seeking loss", lambda c: c.loss.mode_seeking == 0)
_NO_MINIBATCH = lambda c: c.model.minibatch == "none"  # noqa: E731
HINT_PARTS = {
    "d_loss_zero": ("D wins and G's gradients vanish", [
        ("one-sided label smoothing", lambda c: c.tricks.label_smoothing == 0 and not c.tricks.random_labels),
        ("instance noise", lambda c: c.tricks.instance_noise == 0),
        ("a lower lr_d", _ALWAYS),
        _NO_PENALTY,
        ("a non-saturating / Wasserstein loss", lambda c: c.loss.loss not in ("nonsaturating", "wasserstein"))]),
    "grad_norm": ("exploding gradients", [
        ("a lower learning rate", _ALWAYS),
        _NO_PENALTY,
        ("spectral norm", lambda c: not c.model.spectral_norm)]),
    "collapse": ("likely mode collapse (G fools D with a few samples)", [
        ("minibatch discrimination / stddev", _NO_MINIBATCH),
        _NO_PACKING,
        ("feature matching", lambda c: c.loss.feature_matching == 0),
        ("a lower lr_g", _ALWAYS)]),
    "low_diversity": ("the samples are much less diverse than the data (mode collapse)", [
        _NO_MODE_SEEKING,
        ("minibatch discrimination / stddev", _NO_MINIBATCH),
        _NO_PACKING,
        ("unrolled D steps", lambda c: c.loss.unrolled_steps == 0)]),
    "class_collapse": ("G covers only a few classes (mode collapse)", [
        _NO_MODE_SEEKING,
        ("minibatch discrimination", _NO_MINIBATCH),
        _NO_PACKING,
        ("a conditional GAN", lambda c: c.model.conditional == "none")]),
    "nonfinite": ("", [
        ("lower the learning rates", _ALWAYS),
        ("use a gradient penalty", _NO_PENALTY[1]),
        ("check the data for NaN", _ALWAYS)]),
}


def hint(kind: str, train_cfg=None) -> str:
    """The one-line hint for ``kind``: its remedies, less those ``train_cfg`` (a TrainConfig) already uses."""
    meaning, remedies = HINT_PARTS[kind]
    chosen = [text for text, applies in remedies
              if applies is _ALWAYS or train_cfg is None or applies(train_cfg)]
    if not chosen:  # (the run uses every listed remedy already)
        return f"{meaning}; the run already uses every remedy listed for it"
    last = (" or " if len(chosen) == 2 else ", or ") if kind != "nonfinite" else ", "
    listed = last.join([", ".join(chosen[:-1]), chosen[-1]]) if len(chosen) > 1 else chosen[0]
    return f"{meaning}; try {listed}" if meaning else listed


#: the hints with every remedy (no configuration to leave any out)
HINTS = {kind: hint(kind) for kind in HINT_PARTS}


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row: the run stops and keeps its last good checkpoint."""


def _slope(values) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


class FailureMonitor:
    def __init__(self, cfg, loss_kind: str, report: Optional[Callable[[dict], None]] = None,
                 loss_d_minimum: float = 0.0, train_cfg=None):
        self.cfg = cfg
        self.train_cfg = train_cfg  # (the whole training configuration: hints leave out what the run already does)
        self.loss_kind = loss_kind
        self.loss_d_minimum = loss_d_minimum  # what a perfect D's loss is (label tricks raise it above 0)
        self.report = report or (lambda event: None)
        self.low_d_steps = 0
        self.nonfinite_run = 0
        self.last_reported: dict[str, int] = {}
        self.low_diversity_run = 0  # log points in a row below collapse_diversity
        self.class_collapse_run = 0
        self.history: list[dict] = []  # log points: step, loss_g, diversity, modes, d_real, d_fake
        self.events: list[dict] = []

    # -- helpers -------------------------------------------------------------------------------
    def _emit(self, step: int, kind: str, message: str, force: bool = False) -> Optional[dict]:
        last = self.last_reported.get(kind)
        if not force and last is not None and step - last < self.cfg.hint_every:
            return None
        self.last_reported[kind] = step
        event = {"step": step, "kind": kind, "message": f"{message}. Hint: {hint(kind, self.train_cfg)}"}
        self.events.append(event)
        self.report(event)
        return event

    # -- per step ------------------------------------------------------------------------------
    def check_step(self, step: int, stats: dict) -> list[dict]:
        """Per-step checks on ``loss_d`` and the gradient norms ``grad_d`` / ``grad_g``."""
        if not self.cfg.enabled:
            return []
        out = []
        loss_d = stats.get("loss_d")
        if self.loss_kind != "wasserstein" and loss_d is not None and math.isfinite(loss_d):
            if loss_d - self.loss_d_minimum < self.cfg.d_loss_floor:
                self.low_d_steps += 1
            else:
                self.low_d_steps = 0
            if self.low_d_steps >= self.cfg.d_loss_patience:
                least = f" of its least {self.loss_d_minimum:.3g} (label tricks)" if self.loss_d_minimum else ""
                e = self._emit(step, "d_loss_zero", f"step {step}: D loss {loss_d:.2e} within "
                               f"{self.cfg.d_loss_floor:g}{least} for {self.low_d_steps} steps (D loss -> "
                               f"{'its floor' if least else '0'})")
                out += [e] if e else []
        for key, who in (("grad_d", "D"), ("grad_g", "G")):
            g = stats.get(key)
            if g is not None and math.isfinite(g) and g > self.cfg.grad_norm_limit:
                e = self._emit(step, "grad_norm", f"step {step}: {who}'s gradient norm {g:.3g} > "
                               f"{self.cfg.grad_norm_limit:g}")
                out += [e] if e else []
        return out

    def nonfinite(self, step: int, what: str) -> None:
        """Record a skipped non-finite update; raises TrainingDiverged after ``nonfinite_patience`` in a row."""
        self.nonfinite_run += 1
        self._emit(step, "nonfinite", f"step {step}: NaN/Inf in {what}; update skipped "
                   f"({self.nonfinite_run}/{self.cfg.nonfinite_patience} in a row)", force=True)
        if self.nonfinite_run >= self.cfg.nonfinite_patience:
            raise TrainingDiverged(f"stopped at step {step}: {self.nonfinite_run} non-finite steps in a row "
                                   f"(last: {what})")

    def finite_step(self) -> None:
        self.nonfinite_run = 0

    # -- per log point ---------------------------------------------------------------------------
    def check_log(self, step: int, row: dict) -> list[dict]:
        """Trend check on the log rows (``loss_g``, ``diversity``, ``modes``, ``d_real``, ``d_fake``), then the
        mode-collapse thresholds (:meth:`check_collapse`)."""
        return self._check_trends(step, row) + self.check_collapse(step, row)

    def check_collapse(self, step: int, row: dict) -> list[dict]:
        """``low_diversity`` / ``class_collapse``: the diversity ratio, or the share of classes covered
        (``gen_classes_frac``, from the class-histogram probe), below its threshold for ``collapse_patience``
        log points in a row."""
        c = self.cfg
        floor = c.collapse_diversity
        if not c.enabled or step < c.collapse_after:
            return []
        out = []
        div = row.get("diversity")
        if floor > 0 and div is not None and math.isfinite(div):
            self.low_diversity_run = self.low_diversity_run + 1 if div < floor else 0
            if self.low_diversity_run >= c.collapse_patience:
                e = self._emit(step, "low_diversity", f"step {step}: sample diversity {div:.3f} of the data's < "
                               f"{floor:g} for {self.low_diversity_run} log points")
                out += [e] if e else []
        frac = row.get("gen_classes_frac")
        if frac is not None and math.isfinite(frac):
            self.class_collapse_run = self.class_collapse_run + 1 if frac < c.class_floor else 0
            if self.class_collapse_run >= c.collapse_patience:
                e = self._emit(step, "class_collapse", f"step {step}: the samples cover {row.get('gen_classes')} "
                               f"classes ({frac:.0%} < {c.class_floor:.0%}) for {self.class_collapse_run} log points")
                out += [e] if e else []
        return out

    def _check_trends(self, step: int, row: dict) -> list[dict]:
        point = {k: row.get(k) for k in ("loss_g", "diversity", "modes", "d_real", "d_fake")}
        point["step"] = step
        self.history.append(point)
        w = self.cfg.collapse_window
        self.history = self.history[-max(w, 3):]
        if not self.cfg.enabled or len(self.history) < w:
            return []
        hist = self.history[-w:]
        g = [h["loss_g"] for h in hist]
        if any(v is None or not math.isfinite(v) for v in g):
            return []
        g_falling = _slope(g) < 0
        out = []
        div = [h["diversity"] for h in hist]
        if g_falling and all(v is not None and math.isfinite(v) for v in div):
            if _slope(div) < 0 and div[-1] < self.cfg.diversity_floor:
                e = self._emit(step, "collapse", f"step {step}: G loss falling ({g[0]:.3g} -> {g[-1]:.3g}) while "
                               f"sample diversity drops ({div[0]:.2f} -> {div[-1]:.2f} of the data's)")
                out += [e] if e else []
        modes = [h["modes"] for h in hist]
        if g_falling and all(v is not None for v in modes) and modes[-1] < max(modes):
            if _slope(modes) < 0:
                e = self._emit(step, "collapse", f"step {step}: G loss falling ({g[0]:.3g} -> {g[-1]:.3g}) while "
                               f"modes covered drop ({max(modes)} -> {modes[-1]})")
                out += [e] if e else []
        last = hist[-1]
        if (self.loss_kind in ("minimax", "nonsaturating") and last["d_real"] is not None
                and last["d_fake"] is not None and last["diversity"] is not None
                and last["d_fake"] >= last["d_real"] and last["diversity"] < self.cfg.diversity_floor):
            e = self._emit(step, "collapse", f"step {step}: D is fooled (D(G(z)) {last['d_fake']:.2f} >= D(x) "
                           f"{last['d_real']:.2f}) by samples of low diversity ({last['diversity']:.2f})")
            out += [e] if e else []
        return out

    def state_dict(self) -> dict:
        return {"low_d_steps": self.low_d_steps, "nonfinite_run": self.nonfinite_run,
                "low_diversity_run": self.low_diversity_run, "class_collapse_run": self.class_collapse_run,
                "last_reported": dict(self.last_reported), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.low_d_steps = int(state.get("low_d_steps", 0))
        self.nonfinite_run = int(state.get("nonfinite_run", 0))
        self.low_diversity_run = int(state.get("low_diversity_run", 0))
        self.class_collapse_run = int(state.get("class_collapse_run", 0))
        self.last_reported = dict(state.get("last_reported", {}))
        self.history = list(state.get("history", []))
