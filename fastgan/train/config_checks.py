"""More of :func:`fastgan.train.config.validate`: value types, and the impossible combinations not checked there.

``check_types`` runs first (a configuration built in Python can hold any
value: ``cfg.run.steps = "10"``); the range and combination checks assume
its types.  ``check_combinations`` adds one line per conflict, each naming
the option to change.  ``check_against_data`` runs once the data set is
loaded (its number of classes and samples are known only then).
"""
from __future__ import annotations

import math
import typing

#: torchvision / folder data sets: they live under data.root
_ROOTED = ("mnist", "fashion-mnist-torchvision", "cifar10", "folder")
#: in-memory image sets whose size data.max_samples bounds
_IN_MEMORY = ("mnist5k", "fashion-mnist", "digits8x8")


def _expected(tp) -> tuple[type, bool]:
    optional = False
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    return tp, optional


def _type_problem(key: str, tp, value) -> typing.Optional[str]:
    tp, optional = _expected(tp)
    if value is None:
        return None if optional else f"{key}: must not be None"
    got = f"{value!r} ({type(value).__name__})"
    if tp is bool:
        return None if isinstance(value, bool) else f"{key}: expected true or false, got {got}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{key}: expected an integer, got {got}"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key}: expected a number, got {got}"
        return None if math.isfinite(value) else f"{key}: must be a finite number, got {value!r}"
    if tp is str:
        return None if isinstance(value, str) else f"{key}: expected a string, got {got}"
    if tp is list:
        if not isinstance(value, (list, tuple)):
            return f"{key}: expected a list such as [0.7, 1.2], got {got}"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            return f"{key}: expected a list of finite numbers, got {value!r}"
    return None


def check_types(cfg) -> list[str]:
    """One line per option whose value has the wrong type (or is NaN / infinite), per section that is not one."""
    from .config import SECTIONS, TrainConfig, _section_types

    if not isinstance(cfg, TrainConfig):
        return [f"expected a fastgan.train.TrainConfig, got {type(cfg).__name__} (use load_config(...) or "
                "TrainConfig.from_dict(...))"]
    errors = []
    for section, cls in _section_types().items():
        sec = getattr(cfg, section)
        if not isinstance(sec, cls):
            errors.append(f"{section}: expected a {cls.__name__} section, got {type(sec).__name__}")
            continue
        hints = typing.get_type_hints(cls)
        for name, tp in hints.items():
            problem = _type_problem(f"{section}.{name}", tp, getattr(sec, name))
            if problem:
                errors.append(problem)
    assert len(SECTIONS) == len(_section_types())
    return errors


def check_combinations(cfg) -> list[str]:
    """Impossible or silently ineffective combinations beyond those :func:`validate` checks inline."""
    d, m, lo, t, r = cfg.data, cfg.model, cfg.loss, cfg.tricks, cfg.run
    toy = cfg.is_toy()
    arch = cfg.resolved_arch()
    errors = []
    # -- data ---------------------------------------------------------------------------------------------
    if d.dataset in _ROOTED and not d.root:
        errors.append(f"data.root: data set {d.dataset!r} is read from a directory; set data.root (--root DIR)")
    if d.channels is not None and d.dataset != "folder":
        errors.append(f"data.channels: applies to an image folder (data.dataset=folder), not {d.dataset!r}")
    n_data = d.toy_samples if toy else (d.max_samples if d.dataset in _IN_MEMORY else None)
    what = "data.toy_samples" if toy else "data.max_samples"
    if n_data is not None and n_data < r.batch_size:
        errors.append(f"run.batch_size: {r.batch_size} is larger than the data set ({what} = {n_data})")
    # -- model --------------------------------------------------------------------------------------------
    if arch == "mlp" and m.upsample != "convtranspose":
        errors.append(f"model.upsample: {m.upsample!r} applies to the DCGAN generator, not the MLP of toy data")
    if m.d_norm == "vbn":
        packs = t.vbn_reference_size // t.pack
        if packs < 2:
            errors.append(f"tricks.vbn_reference_size: D's virtual batch norm needs a reference batch of >= 2 "
                          f"packs, but {t.vbn_reference_size} samples make {packs} pack(s) of {t.pack}")
        if n_data is not None and t.vbn_reference_size > n_data:
            errors.append(f"tricks.vbn_reference_size: {t.vbn_reference_size} is larger than the data set "
                          f"({what} = {n_data}) that D's reference batch is drawn from")
    # -- loss ---------------------------------------------------------------------------------------------
    if lo.loss == "wasserstein" and lo.penalty == "none" and lo.clip_weights <= 0 and not m.spectral_norm:
        errors.append("loss.loss: 'wasserstein' needs a Lipschitz constraint on D: loss.penalty (wgan-gp / "
                      "wgan-lp), loss.clip_weights or model.spectral_norm; without one the critic diverges")
    if lo.penalty_weight is not None and lo.penalty == "none":
        errors.append("loss.penalty_weight: set loss.penalty too (the weight of which penalty?)")
    # -- tricks -------------------------------------------------------------------------------------------
    if t.replay_size > 0 and m.conditional == "embedding" and lo.penalty in ("wgan-gp", "wgan-lp"):
        errors.append(f"tricks.replay_size: replayed fakes keep their own classes, but penalty {lo.penalty!r} of a "
                      "conditional critic interpolates real / fake pairs of one class; turn replay off or use "
                      "another penalty (r1, dragan)")
    if t.replay_size > 0 and t.replay_ratio <= 0:
        errors.append("tricks.replay_ratio: 0 replays nothing; raise it or set tricks.replay_size=0")
    if t.swap_prob > 0 and t.swap_every >= r.steps:
        errors.append(f"tricks.swap_every: the first G / D snapshot comes at step {t.swap_every}, but the run "
                      f"ends at step {r.steps}; swapping would never happen")
    if m.d_norm == "vbn" and m.minibatch == "stddev":
        # D's reference pass runs the stddev layer on the reference batch too
        per_ref = t.vbn_reference_size // t.pack
        group = min(m.stddev_group, per_ref)
        if per_ref >= 2 and per_ref % group:
            errors.append(f"tricks.vbn_reference_size: D's reference batch ({per_ref}) goes through the minibatch "
                          f"stddev layer too, so it must be a multiple of model.stddev_group ({m.stddev_group})")
    # -- run ----------------------------------------------------------------------------------------------
    if r.eval_every and r.eval_every % r.log_every:
        errors.append(f"run.eval_every: evaluations run at log points, so {r.eval_every} must be a multiple of "
                      f"run.log_every ({r.log_every})")
    return errors


def check_against_data(cfg, dataset) -> list[str]:
    """Conflicts between the configuration and the loaded data set."""
    errors = []
    classes = int(getattr(dataset, "num_classes", 0) or 0)
    if cfg.model.conditional != "none" and classes < 2:
        errors.append(f"model.conditional: {cfg.model.conditional!r} needs labelled data with >= 2 classes, but "
                      f"data set {cfg.data.dataset!r} has {classes}")
    return errors


#: defaults of earlier versions, which a run's written config.yaml may hold without the user having set them
FORMER_DEFAULTS = {"tricks.real_label_range": ([0.7, 1.2],)}


def _differs(cfg, key: str) -> bool:
    """Whether option ``key`` ('section.name') holds a value other than its default (or a former one)."""
    import dataclasses

    from .config import field_table

    f = field_table()[key]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    section, name = key.split(".", 1)
    value = getattr(getattr(cfg, section), name)
    if isinstance(default, list):
        value = list(value)
    return value != default and value not in FORMER_DEFAULTS.get(key, ())


def check_new_run(cfg) -> list[str]:
    """Checks for a new run only: a resumed checkpoint's locked options trained as they are, and one written
    before these checks (or before ``tricks.real_label_range``'s default became [0.7, 1.0]) must resume."""
    lo, t = cfg.loss, cfg.tricks
    errors = []
    for key in ("real_label_range", "fake_label_range"):
        rng = getattr(t, key)
        if (t.random_labels and lo.loss in ("minimax", "nonsaturating") and len(rng) == 2
                and not 0.0 <= rng[0] <= rng[1] <= 1.0):
            errors.append(f"tricks.{key}: binary cross-entropy ({lo.loss!r}) needs targets in [0, 1], got {rng!r} "
                          "(a target above 1 rewards D for ever larger logits: its loss has no minimum)")
    return errors + _ineffective_options(cfg)


def _ineffective_options(cfg) -> list[str]:
    """Options set to a non-default value that the rest of the configuration ignores: a typo'd or
    forgotten companion option would otherwise train something else than the user asked for, silently."""
    m, lo, o, t = cfg.model, cfg.loss, cfg.optim, cfg.tricks
    # (option, whether something uses it, the option that makes it count)
    rules = [
        ("optim.momentum_d", o.optimizer_d == "sgd", "optim.optimizer_d=sgd"),
        ("optim.beta1", "adam" in (o.optimizer_g, o.optimizer_d), "an Adam optimiser (optim.optimizer_g / _d)"),
        ("optim.beta2", "adam" in (o.optimizer_g, o.optimizer_d), "an Adam optimiser (optim.optimizer_g / _d)"),
        ("tricks.ema_start", t.ema > 0, "tricks.ema"),
        ("tricks.instance_noise_decay", t.instance_noise > 0, "tricks.instance_noise"),
        ("tricks.real_label_range", t.random_labels, "tricks.random_labels=true"),
        ("tricks.fake_label_range", t.random_labels, "tricks.random_labels=true"),
        ("tricks.swap_every", t.swap_prob > 0, "tricks.swap_prob"),
        ("tricks.swap_pool", t.swap_prob > 0, "tricks.swap_prob"),
        ("tricks.slerp_grid", not cfg.is_toy(), "image data (toy samples are scatter plots)"),
        ("loss.aux_weight", m.conditional == "acgan", "model.conditional=acgan"),
        ("model.minibatch_kernels", m.minibatch == "discrimination", "model.minibatch=discrimination"),
        ("model.minibatch_kernel_dim", m.minibatch == "discrimination", "model.minibatch=discrimination"),
        ("model.stddev_group", m.minibatch == "stddev", "model.minibatch=stddev"),
    ]
    errors = [f"{key}: has no effect without {needs}; set that too or leave {key} at its default"
              for key, used, needs in rules if not used and _differs(cfg, key)]
    if lo.penalty != "none" and lo.penalty_weight == 0:
        errors.append(f"loss.penalty_weight: 0 turns penalty {lo.penalty!r} off; set loss.penalty=none instead")
    return errors
