"""Trainer configuration: dataclasses, named presets, YAML loading, overrides and validation.

A configuration has seven sections (``data``, ``model``, ``loss``, ``optim``,
``tricks``, ``run``, ``monitor``).  Every field carries a one-line doc string
and, for the stabilisation tricks, its source; ``fastgan train --list-options``
prints them (:func:`describe_options`).  The field defaults are the *plain*
choices: every trick is off unless a preset (or the user) turns it on.

Where values come from, later ones winning:

1. a preset (``--preset NAME``, or ``preset: NAME`` in the YAML file; when
   neither is given the trainer picks ``toy-<name>`` for the 2D toy sets and
   ``dcgan-mnist`` for images; ``preset: none`` starts from the plain
   defaults);
2. the YAML file (``--config FILE``), nested by section or flat (a field
   name that is unique across sections may stand alone);
3. the dedicated command-line flags (``--dataset``, ``--steps``, ...);
4. ``--set key=value`` (``key`` is ``section.field`` or a unique field name,
   ``value`` is parsed as YAML).

:func:`validate` checks types, ranges and impossible combinations and raises
:class:`ConfigError` with one line per problem.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import yaml

SECTIONS = ("data", "model", "loss", "optim", "tricks", "run", "monitor")
LOSSES = ("minimax", "nonsaturating", "lsgan", "hinge", "wasserstein")
PENALTIES = ("none", "wgan-gp", "wgan-lp", "r1", "r2", "dragan")
CONDITIONAL = ("none", "acgan", "embedding")


class ConfigError(ValueError):
    """A bad configuration; ``errors`` holds one line per problem."""

    def __init__(self, errors):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def opt(default, doc: str, *, source: Optional[str] = None, choices=None, trick: bool = False,
        minimum=None, maximum=None):
    """A dataclass field with a doc string, an optional source, allowed values and bounds."""
    meta = dict(doc=doc, source=source, choices=tuple(choices) if choices else None, trick=trick,
                minimum=minimum, maximum=maximum)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _datasets():
    from ..data import DATASETS

    return DATASETS


def _impls():
    from .._backend import IMPLS

    return IMPLS


def issue13_checks(cfg) -> list[str]:
    from .arch_checks import check_issue13_options

    return check_issue13_options(cfg)


def _norms():
    from ..models import NORMS

    return NORMS


@dataclass
class DataConfig:
    dataset: str = opt("mnist5k", "data set: mnist5k (shipped, offline), fashion-mnist, digits8x8, mnist, "
                       "fashion-mnist-torchvision, cifar10, folder, ring8, grid25", choices=_datasets())
    root: Optional[str] = opt(None, "data directory (Fashion-MNIST IDX files, torchvision data, image folder)")
    download: bool = opt(False, "let torchvision download its data sets (needs internet)")
    image_size: int = opt(32, "image side in pixels (a power of two >= 8; DCGAN sizes are 32 and 64)", minimum=8)
    max_samples: Optional[int] = opt(None, "keep N images, the same fixed random subset every run (in-memory data sets)", minimum=1)
    channels: Optional[int] = opt(None, "1 or 3 for an image folder", choices=(None, 1, 3))
    workers: Optional[int] = opt(None, "DataLoader workers for torchvision / folder data (default min(4, CPUs))",
                                 minimum=0)
    toy_samples: int = opt(100_000, "points drawn once from a 2D toy mixture", minimum=1)
    scale_inputs: bool = opt(False, "images scaled to [-1, 1] and a tanh generator output (off: [0, 1] data and "
                             "a sigmoid-like output, (tanh + 1) / 2)",
                             source="ganhacks #1; Radford et al. 2016 (DCGAN)", trick=True)


@dataclass
class ModelConfig:
    arch: str = opt("auto", "dcgan (images), resnet (images: SNGAN-style residual G / D) or mlp (2D toy data); "
                    "auto picks dcgan or mlp by data set", choices=("auto", "dcgan", "mlp", "resnet"))
    nz: int = opt(100, "latent size", minimum=1)
    z_dist: str = opt("uniform", "latent distribution: normal = Gaussian z (the trick), uniform = U[-1, 1]",
                      source="ganhacks #3; White 2016 (Sampling generative networks)", trick=True,
                      choices=("uniform", "normal"))
    ngf: int = opt(64, "DCGAN generator width", minimum=1)
    ndf: int = opt(64, "DCGAN discriminator width", minimum=1)
    hidden: int = opt(128, "MLP hidden units (toy data)", minimum=1)
    depth: int = opt(3, "MLP hidden layers (toy data)", minimum=1)
    g_norm: str = opt("batch", "generator norm: batch, none, instance, layer, vbn (virtual batch norm)",
                      choices=_norms())
    d_norm: str = opt("batch", "discriminator norm; instance / layer when batch norm is not an option "
                      "(a critic with a gradient penalty); vbn = virtual batch norm",
                      source="ganhacks #4; Gulrajani et al. 2017 (WGAN-GP, layer norm); Salimans et al. 2016 "
                      "(VBN)", trick=True, choices=_norms())
    g_activation: str = opt("relu", "generator activation", choices=("relu", "leaky_relu"))
    d_activation: str = opt("relu", "discriminator activation; leaky_relu (slope 0.2) is the trick",
                            source="ganhacks #5; Radford et al. 2016", trick=True, choices=("relu", "leaky_relu"))
    downsample: str = opt("stride", "discriminator downsampling: strided conv or conv + average pooling",
                          source="ganhacks #5; Radford et al. 2016", trick=True, choices=("stride", "avgpool"))
    upsample: str = opt("convtranspose", "generator upsampling: ConvTranspose2d, or pixelshuffle (sub-pixel conv, ICNR init; Shi et al. 2016, Aitken et al. 2017)",
                        source="ganhacks #5; Shi et al. 2016 (PixelShuffle)", trick=True,
                        choices=("convtranspose", "pixelshuffle"))
    minibatch: str = opt("none", "a discriminator layer that sees the batch: discrimination (Salimans) or stddev "
                         "(ProGAN)", source="Salimans et al. 2016, sec. 3.2; Karras et al. 2018", trick=True,
                         choices=("none", "discrimination", "stddev"))
    minibatch_kernels: int = opt(32, "minibatch discrimination: number of kernels B", minimum=1)
    minibatch_kernel_dim: int = opt(8, "minibatch discrimination: kernel dimension C", minimum=1)
    stddev_group: int = opt(4, "minibatch stddev: group size", minimum=1)
    spectral_norm: bool = opt(False, "spectral normalisation of every discriminator weight",
                              source="Miyato et al. 2018", trick=True)
    conditional: str = opt("none", "use the labels: acgan (G gets the label, D an auxiliary classifier) or "
                           "embedding (G gets a label embedding, D a projection)",
                           source="ganhacks #16; Odena et al. 2017 (AC-GAN); Mirza & Osindero 2014; Miyato & "
                           "Koyama 2018 (projection)", trick=True, choices=CONDITIONAL)
    embed_dim: int = opt(16, "label embedding size of a conditional generator", minimum=1)
    fused: bool = opt(True, "fastgan's fused norm + activation layers (off: plain PyTorch layers)")
    impl: str = opt("auto", "backend of every fused layer: auto, ref, triton, cuda", choices=_impls())
    init: str = opt("dcgan", "weight init: dcgan = N(0, 0.02), default = PyTorch's", choices=("dcgan", "default"))
    # -- issue 13: architectures --
    attention_res: int = opt(0, "SAGAN self-attention block after the G and D blocks whose feature maps have this "
                             "side, e.g. 8 (model.arch resnet; 0: off)", source="Zhang et al. 2019 (SAGAN)",
                             trick=True, minimum=0)
    g_dropout: float = opt(0.0, "dropout probability after each hidden generator layer, active while training "
                           "(0: off)", source="ganhacks #17; Isola et al. 2017 (pix2pix)", trick=True, minimum=0.0,
                           maximum=0.9)
    g_dropout_sampling: bool = opt(False, "keep G's dropout on when sampling too (noise at training and test "
                                   "time; needs g_dropout > 0)", source="ganhacks #17", trick=True)
    g_spectral_norm: bool = opt(False, "spectral normalisation of every generator weight too",
                                source="Zhang et al. 2019 (SAGAN)", trick=True)
    num_generators: int = opt(1, "MGAN: K generators sharing all layers but the first (sample i from generator "
                              "i % K) and a D head classifying which one made a sample (1: off)",
                              source="Hoang et al. 2018 (MGAN); Ghosh et al. 2018 (MAD-GAN)", trick=True, minimum=1)


@dataclass
class LossConfig:
    loss: str = opt("minimax", "GAN loss: minimax, nonsaturating (G maximises log D(G(z))), lsgan, hinge, "
                    "wasserstein", source="Goodfellow et al. 2014, sec. 3 and ganhacks #2 (non-saturating); "
                    "Mao et al. 2017 (LSGAN); Lim & Ye 2017 (hinge); Arjovsky et al. 2017 (WGAN)", trick=True,
                    choices=LOSSES)
    penalty: str = opt("none", "gradient penalty on D: wgan-gp, wgan-lp, r1, r2, dragan",
                       source="Gulrajani et al. 2017; Petzka et al. 2018; Mescheder et al. 2018; Kodali et al. 2017",
                       trick=True, choices=PENALTIES)
    penalty_weight: Optional[float] = opt(None, "penalty weight (lambda, or gamma for r1 / r2); default 10",
                                          minimum=0.0)
    penalty_every: int = opt(1, "apply the penalty every k D steps with weight x k (lazy regularisation)",
                             source="Karras et al. 2020 (StyleGAN2)", minimum=1)
    clip_weights: float = opt(0.0, "clip D's weights to [-c, c] after each D step (the original WGAN; 0: off)",
                              source="Arjovsky et al. 2017", minimum=0.0)
    aux_weight: float = opt(1.0, "weight of the AC-GAN auxiliary classification loss", minimum=0.0)
    feature_matching: float = opt(0.0, "weight of ||E f(x) - E f(G(z))||^2 on D's last hidden features in G's loss",
                                  source="Salimans et al. 2016, sec. 3.1", trick=True, minimum=0.0)
    feature_matching_only: bool = opt(False, "G trains on feature matching alone (no adversarial G loss)",
                                      source="Salimans et al. 2016, sec. 3.1")
    historical_averaging: float = opt(0.0, "weight of ||theta - mean of past theta||^2 added to G's and D's losses",
                                      source="Salimans et al. 2016, sec. 3.3", trick=True, minimum=0.0)
    # -- issue 13: losses and regularisers --
    mode_seeking: float = opt(0.0, "weight of the mode-seeking term 1 / (mean|G(z1)-G(z2)| / mean|z1-z2| + eps) in "
                              "G's loss, against mode collapse (0: off)", source="Mao et al. 2019 (MSGAN)",
                              trick=True, minimum=0.0)
    pixel_loss: str = opt("none", "pixel-level l1 / l2 loss of G's output against a target, for paired or "
                          "reconstructive settings (needs a target: Trainer.pixel_pair; none of the built-in data "
                          "sets has one)", source="Isola et al. 2017 (pix2pix); Larsen et al. 2016", trick=True,
                          choices=("none", "l1", "l2"))
    pixel_weight: float = opt(10.0, "pixel loss weight during the warm-up", minimum=0.0)
    pixel_warmup: int = opt(0, "steps at the full pixel loss weight", minimum=0)
    pixel_decay: int = opt(0, "steps over which the pixel loss weight then falls linearly to 0 (0: it stays)",
                           minimum=0)
    unrolled_steps: int = opt(0, "Unrolled GAN: G's loss against D unrolled K steps of D's own optimiser (SGD or "
                              "Adam), differentiated through; D keeps its plain update (0: off)",
                              source="Metz et al. 2017 (Unrolled GANs)", trick=True, minimum=0)
    hybrid: str = opt("none", "VAE + GAN hybrids with an encoder q(z|x): vae_gan = KL + reconstruction in D's "
                      "feature space, D also judges reconstructions; kl_gan = KL + pixel reconstruction + GAN",
                      source="Larsen et al. 2016 (VAE-GAN); ganhacks #16", trick=True,
                      choices=("none", "vae_gan", "kl_gan"))
    hybrid_kl_weight: float = opt(1.0, "hybrid: weight of KL(q(z|x) || N(0, I))", minimum=0.0)
    hybrid_recon_weight: float = opt(1.0, "hybrid: weight of the reconstruction loss (mean squared error)",
                                     minimum=0.0)
    generator_classifier: float = opt(1.0, "MGAN's beta: weight of the cross-entropy of D's generator-classifier "
                                      "head (D and G both minimise it; needs model.num_generators > 1)",
                                      source="Hoang et al. 2018 (MGAN)", minimum=0.0)
    semi_supervised: bool = opt(False, "semi-supervised GAN: D is a K-class classifier with D(x) = Z / (Z + 1), "
                                "trained on a few labelled examples per class plus the GAN loss; accuracy on a "
                                "held-out split goes to the metrics log (pair with feature matching)",
                                source="Salimans et al. 2016, sec. 5", trick=True)
    labelled_per_class: int = opt(10, "semi-supervised: labelled training examples per class", minimum=1)
    semi_holdout: int = opt(500, "semi-supervised: examples held out of training for the accuracy", minimum=1)
    semi_weight: float = opt(1.0, "semi-supervised: weight of the supervised cross-entropy in D's loss",
                             minimum=0.0)


@dataclass
class OptimConfig:
    optimizer_g: str = opt("adam", "generator optimiser", choices=("adam", "sgd"))
    optimizer_d: str = opt("adam", "discriminator optimiser; sgd for D is the trick",
                           source="ganhacks #9", trick=True, choices=("adam", "sgd"))
    lr_g: float = opt(2e-4, "generator learning rate", source="Radford et al. 2016", minimum=0.0)
    lr_d: float = opt(2e-4, "discriminator learning rate; lr_d != lr_g is TTUR (e.g. 4e-4 / 1e-4)",
                      source="Heusel et al. 2017 (TTUR)", trick=True, minimum=0.0)
    beta1: float = opt(0.5, "Adam beta1 (0.5: DCGAN; 0.0: WGAN-GP)", source="Radford et al. 2016", minimum=0.0,
                       maximum=0.9999)
    beta2: float = opt(0.999, "Adam beta2 (0.9: WGAN-GP)", minimum=0.0, maximum=0.99999)
    momentum_d: float = opt(0.0, "SGD momentum for D", minimum=0.0, maximum=0.9999)
    n_critic: int = opt(1, "D steps per G step", source="Arjovsky et al. 2017; Gulrajani et al. 2017", trick=True,
                        minimum=1)
    # -- issue 13: weight decay and schedules --
    weight_decay_g: float = opt(0.0, "L2 weight decay of G's parameters", source="Loshchilov & Hutter 2019 (AdamW)",
                                trick=True, minimum=0.0)
    weight_decay_d: float = opt(0.0, "L2 weight decay of D's parameters", source="Loshchilov & Hutter 2019 (AdamW)",
                                trick=True, minimum=0.0)
    weight_decay_mode: str = opt("decoupled", "decoupled (AdamW: p -= lr * wd * p after the step) or coupled "
                                 "(wd * p added to the gradient, Adam's weight_decay); SGD: torch's weight_decay",
                                 choices=("decoupled", "coupled"))
    fused_adam: str = opt("auto", "PyTorch's fused Adam / AdamW: one or two launches per update, and a non-finite "
                          "update is skipped on the device, so a step reads the GPU back only for its statistics "
                          "(auto: on for CUDA)", choices=("auto", "on", "off"))
    d_pretrain: int = opt(0, "the first N steps train D only (G's weights unchanged until step N + 1)",
                          source="ganhacks #14 (train the discriminator more, sometimes)", trick=True,
                          minimum=0)
    balance: bool = opt(False, "loss balancing: D steps only while its loss > balance_d_above, G while its loss > "
                        "balance_g_above (G always steps when D did not). ganhacks #11 warns: don't balance loss "
                        "via statistics unless you have a good reason to", source="ganhacks #11", trick=True)
    balance_d_above: float = opt(0.3, "balance: D trains while its loss is above this (A)")
    balance_g_above: float = opt(0.3, "balance: G trains while its loss is above this (B)")


@dataclass
class TricksConfig:
    separate_batches: bool = opt(False, "D sees all-real and all-fake batches separately (off: one mixed batch); "
                                 "one D pass with per-half batch statistics where D's layers allow it "
                                 "(fastgan.nn.separate_batches), else two", source="ganhacks #4", trick=True)
    label_smoothing: float = opt(0.0, "one-sided label smoothing: D's real target is 1 - s (fake stays 0)",
                                 source="Salimans et al. 2016, sec. 3.4; ganhacks #6", trick=True, minimum=0.0,
                                 maximum=0.5)
    random_labels: bool = opt(False, "random label smoothing: real targets ~ U(real_label_range), fake ~ "
                              "U(fake_label_range), drawn per sample", source="ganhacks #6", trick=True)
    real_label_range: list = opt([0.7, 1.0], "range of random real targets (ganhacks' [0.7, 1.2] with lsgan only: "
                                 "binary cross-entropy needs targets in [0, 1])")
    fake_label_range: list = opt([0.0, 0.3], "range of random fake targets")
    label_flip: float = opt(0.0, "noisy labels: probability that a D target is flipped (real <-> fake)",
                            source="ganhacks #6", trick=True, minimum=0.0, maximum=1.0)
    instance_noise: float = opt(0.0, "std of Gaussian noise added to D's real and fake inputs, decaying linearly",
                                source="Sonderby et al. 2017; Arjovsky & Bottou 2017; ganhacks #13", trick=True,
                                minimum=0.0)
    instance_noise_decay: int = opt(0, "steps over which the instance noise decays to 0 (0: the whole run, "
                                    "as long as run.steps when it started; a --resume with more steps keeps it)",
                                    minimum=0)
    replay_size: int = opt(0, "experience replay: a buffer of this many old fakes (0: off)",
                           source="Shrivastava et al. 2017; ganhacks #15", trick=True, minimum=0)
    replay_ratio: float = opt(0.5, "fraction of each D fake batch drawn from the replay buffer", minimum=0.0,
                              maximum=1.0)
    swap_prob: float = opt(0.0, "probability per step of training against an old G / D snapshot (0: off)",
                           source="ganhacks #15", trick=True, minimum=0.0, maximum=1.0)
    swap_every: int = opt(500, "steps between snapshots of G and D for swapping", minimum=1)
    swap_pool: int = opt(5, "snapshots kept for swapping", minimum=1)
    ema: float = opt(0.0, "decay of an exponential moving average of G's weights used for samples (0: off; "
                     "0.999 typical)", source="Yazici et al. 2019; Karras et al. 2018", trick=True, minimum=0.0,
                     maximum=0.999999)
    ema_start: int = opt(0, "step at which the EMA starts averaging (before: a copy of G)", minimum=0)
    pack: int = opt(1, "PacGAN: D judges packs of this many samples concatenated along channels",
                    source="Lin et al. 2018 (PacGAN)", trick=True, minimum=1)
    vbn_reference_size: int = opt(64, "size of the fixed reference batch of virtual batch norm", minimum=2)
    slerp_grid: bool = opt(False, "also write a spherical-interpolation grid of the fixed z with each sample grid",
                           source="White 2016; ganhacks #3", trick=True)


@dataclass
class RunConfig:
    steps: int = opt(1000, "generator steps (each after n_critic D steps)", minimum=1)
    batch_size: int = opt(64, "batch size", minimum=2)
    seed: int = opt(0, "random seed (weights, z, data order)", minimum=0)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    out: str = opt("runs/train", "output directory")
    log_every: int = opt(50, "metrics line every N steps", minimum=1)
    sample_every: int = opt(500, "sample grid every N steps (0: only at the end)", minimum=0)
    checkpoint_every: int = opt(500, "checkpoint every N steps (last.pt, plus step_N.pt; 0: only at the end)",
                                minimum=0)
    keep_checkpoints: int = opt(3, "periodic step_N.pt checkpoints kept (0: all)", minimum=0)
    n_samples: int = opt(64, "images in a sample grid (points in a toy scatter: x 16)", minimum=1)
    eval_every: int = opt(0, "evaluate fastgan.metrics every N steps (0: off)", minimum=0)
    best_metric: str = opt("", "keep checkpoints/best.pt by this periodic-evaluation metric, e.g. "
                           "eval_modes_covered or eval_classifier_score ('': off; needs eval_every)")
    best_mode: str = opt("auto", "whether best_metric improves upwards or downwards (auto: down for names with "
                         "kl / fid / kid, up otherwise)", choices=("auto", "max", "min"))
    eval_samples: int = opt(2000, "samples per evaluation", minimum=10)
    progress: bool = opt(True, "progress bar")
    plots: bool = opt(True, "matplotlib figures: losses.png and the toy scatter PNGs (the .npy points are always "
                      "written)")
    threads: int = opt(0, "torch CPU threads (0: torch's default)", minimum=0)
    channels_last: str = opt("auto", "NHWC tensors (auto: on for CPU and CUDA)", choices=("auto", "on", "off"))
    amp: str = opt("off", "mixed precision: bf16, or fp16 with a gradient scaler (statistics of the fused layers "
                   "stay float32)", choices=("off", "bf16", "fp16"))
    tensorboard: bool = opt(False, "also log scalars and sample grids to DIR/tensorboard (needs the tensorboard "
                            "package)")
    compile_g: bool = opt(False, "torch.compile the generator's training forward (not with virtual batch norm)")
    deterministic: bool = opt(False, "torch.use_deterministic_algorithms (GPU runs; CPU is deterministic)")
    cudnn_benchmark: str = opt("auto", "cuDNN's autotuner: time the convolution algorithms once per shape and keep "
                               "the fastest (auto: on for CUDA unless deterministic)", choices=("auto", "on", "off"))
    cuda_graph: bool = opt(False, "capture the training step in one CUDA graph and replay it (CUDA; after "
                           "run.cuda_graph_warmup eager steps): at small batch the host issuing kernels, not the GPU, "
                           "bounds a step. Options the capture cannot take are refused by name")
    cuda_graph_warmup: int = opt(3, "eager steps before run.cuda_graph captures the step (cuDNN's autotuner, Triton "
                                 "compilation and the optimisers' state run there)", minimum=1)


@dataclass
class MonitorConfig:
    enabled: bool = opt(True, "watch for failure modes and report them as they happen")
    d_loss_floor: float = opt(0.01, "D loss below this ...", minimum=0.0)
    d_loss_patience: int = opt(50, "... for this many steps in a row: 'D loss -> 0'", minimum=1)
    grad_norm_limit: float = opt(100.0, "warn when a gradient norm exceeds this", minimum=0.0)
    collapse_window: int = opt(8, "log points compared for 'G loss falling while samples degrade'", minimum=3)
    diversity_floor: float = opt(0.5, "sample diversity (fake / real mean pairwise distance) below this counts "
                                 "as degraded", minimum=0.0)
    nonfinite_patience: int = opt(3, "NaN / Inf steps in a row (each skipped) before the run stops", minimum=1)
    hint_every: int = opt(200, "steps before the same warning is printed again", minimum=1)
    # -- issue 13: mode-collapse monitor --
    collapse_diversity: float = opt(0.2, "warn 'low_diversity' when the diversity ratio (fake / real mean pairwise "
                                    "distance) stays below this (0: off)", minimum=0.0)
    collapse_after: int = opt(500, "steps before the mode-collapse warnings are armed (an untrained G is not "
                              "diverse yet)", minimum=0)
    collapse_patience: int = opt(3, "log points in a row below a mode-collapse threshold before the warning",
                                 minimum=1)
    class_histogram: bool = opt(False, "classify fixed-z samples at each log point with fastgan.metrics' classifier "
                                "(mnist5k / mnist / fashion-mnist) and log the class histogram's coverage",
                                source="Srivastava et al. 2017 (VEEGAN, mode counting)")
    class_samples: int = opt(500, "samples classified per log point", minimum=10)
    class_floor: float = opt(0.8, "warn 'class_collapse' when fewer than this fraction of the classes hold 20% of "
                             "their fair share of the samples", minimum=0.0, maximum=1.0)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tricks: TricksConfig = field(default_factory=TricksConfig)
    run: RunConfig = field(default_factory=RunConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    preset: Optional[str] = None  # the preset this configuration started from (informational)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg

    def is_toy(self) -> bool:
        from ..data import TOY_DATASETS

        return self.data.dataset in TOY_DATASETS

    def resolved_arch(self) -> str:
        if self.model.arch != "auto":
            return self.model.arch
        return "mlp" if self.is_toy() else "dcgan"


# ----------------------------------------------------------------------------
# Field lookup
# ----------------------------------------------------------------------------

_SECTION_CLASSES = {f.name: f.type for f in fields(TrainConfig) if f.name in SECTIONS}


def _section_types() -> dict:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in SECTIONS}


def field_table() -> dict:
    """{'section.name': dataclasses.Field} for every option."""
    table = {}
    for section, cls in _section_types().items():
        for f in fields(cls):
            table[f"{section}.{f.name}"] = f
    return table


def _short_names() -> dict:
    """field name -> 'section.name' for names unique across sections."""
    seen: dict[str, list] = {}
    for key in field_table():
        seen.setdefault(key.split(".", 1)[1], []).append(key)
    return {name: keys[0] for name, keys in seen.items() if len(keys) == 1}


def resolve_key(key: str) -> str:
    """'section.field' for a full or a unique short key; raises ConfigError naming close matches."""
    table = field_table()
    key = key.strip().replace("-", "_")
    if key in table:
        return key
    short = _short_names()
    if key in short:
        return short[key]
    candidates = list(table) + list(short)
    section, _, name = key.rpartition(".")
    elsewhere = [k for k in table if k.split(".", 1)[1] == name.replace("-", "_")]
    if section and elsewhere:  # the right name in the wrong section
        raise ConfigError(f"unknown option {key!r}: {name!r} is in section {elsewhere[0].split('.')[0]!r} "
                          f"(did you mean {', '.join(repr(k) for k in elsewhere)}?)")
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ConfigError(f"unknown option {key!r}{hint}; `fastgan train --list-options` lists them")


def _type_of(key: str):
    section, name = key.split(".", 1)
    return typing.get_type_hints(_section_types()[section])[name]


def coerce_option(key: str, value):
    """Convert ``value`` to the field's type or raise ConfigError with one line."""
    tp = _type_of(key)
    optional = False
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if optional:
            return None
        raise ConfigError(f"{key}: must not be null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                    if f.is_integer():
                        return int(f)
                except ValueError:
                    pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "run.device":
            return str(value)
        if isinstance(value, bool) and {"on", "off"} <= set(field_table()[key].metadata.get("choices") or ()):
            return "on" if value else "off"  # YAML reads an unquoted on / off as true / false
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list such as [0.7, 1.2], got {value!r}")
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}") from None
    return value


def set_option(cfg: TrainConfig, key: str, value) -> None:
    full = resolve_key(key)
    section, name = full.split(".", 1)
    setattr(getattr(cfg, section), name, coerce_option(full, value))


def flatten(d: dict, *, where: str = "config") -> list[tuple[str, Any]]:
    """[(key, value)] from a nested-by-section or flat mapping (``preset`` / ``base`` keys excluded)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(d).__name__}")
    out = []
    for key, value in d.items():
        if key in ("preset", "base"):
            continue
        if key in SECTIONS and (isinstance(value, dict) or value is None):
            out += [(f"{key}.{k}", v) for k, v in (value or {}).items()]
        elif key in SECTIONS and key not in _short_names():  # ('loss' is also the field loss.loss)
            raise ConfigError(f"{where}: section {key!r} must be a mapping of options, got {value!r}")
        else:
            out.append((str(key), value))
    return out


def apply_overrides(cfg: TrainConfig, d: dict, *, where: str = "config") -> TrainConfig:
    """Apply a nested or flat mapping of options; all bad keys / values are reported together."""
    errors = []
    for key, value in flatten(d, where=where):
        try:
            set_option(cfg, key, value)
        except ConfigError as exc:
            errors += [f"{where}: {e}" for e in exc.errors]
    if errors:
        raise ConfigError(errors)
    return cfg


def parse_set(items) -> dict:
    """``["a.b=1", "c=[0.1, 0.2]"]`` -> {"a.b": 1, "c": [0.1, 0.2]} (values parsed as YAML)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


# ----------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------

#: The DCGAN baseline's tricks (Radford et al. 2016 + ganhacks), shared by the image presets.
_DCGAN_BASE = {
    "data": {"dataset": "mnist5k", "image_size": 32, "scale_inputs": True},
    "model": {"arch": "dcgan", "nz": 100, "ngf": 64, "ndf": 32, "z_dist": "normal", "g_norm": "batch",
              "d_norm": "batch", "d_activation": "leaky_relu"},
    "loss": {"loss": "nonsaturating"},
    "optim": {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999},
    "tricks": {"separate_batches": True},
    "run": {"batch_size": 64, "steps": 2000, "sample_every": 250, "checkpoint_every": 500, "log_every": 50},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for section, values in extra.items():
        if isinstance(values, dict):
            out.setdefault(section, {}).update(copy.deepcopy(values))
        else:
            out[section] = values
    return out


PRESETS: dict[str, dict] = {
    # DCGAN (Radford et al. 2016) on the 5000 shipped MNIST digits: Adam 2e-4 / 0.5, BN, LeakyReLU D,
    # non-saturating loss, Gaussian z, separate real / fake batches.
    "dcgan-mnist": _merge(_DCGAN_BASE, {}),
    "dcgan-fashion": _merge(_DCGAN_BASE, {"data": {"dataset": "fashion-mnist"}}),
    "dcgan-mnist-64": _merge(_DCGAN_BASE, {"data": {"image_size": 64}, "model": {"ngf": 32, "ndf": 32}}),
    # WGAN-GP (Gulrajani et al. 2017, Algorithm 1): lambda 10, n_critic 5, Adam 1e-4 (beta1 0, beta2 0.9), a
    # layer-normalised critic (no batch norm with a per-sample penalty).  The authors' MNIST code used beta1 0.5.
    "wgan-gp-mnist": _merge(_DCGAN_BASE, {
        "model": {"d_norm": "layer"},
        "loss": {"loss": "wasserstein", "penalty": "wgan-gp", "penalty_weight": 10.0},
        "optim": {"lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.0, "beta2": 0.9, "n_critic": 5},
        "tricks": {"separate_batches": True},
    }),
    # LSGAN (Mao et al. 2017): least squares with targets a=0, b=c=1; Adam 2e-4 / 0.5.
    "lsgan-mnist": _merge(_DCGAN_BASE, {"loss": {"loss": "lsgan"}}),
    # Hinge loss with a spectrally normalised D (Miyato et al. 2018), TTUR learning rates (Heusel et al. 2017).
    "hinge-sn-mnist": _merge(_DCGAN_BASE, {
        "model": {"d_norm": "none", "spectral_norm": True},
        "loss": {"loss": "hinge"},
        "optim": {"lr_g": 1e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.9},
    }),
    # AC-GAN (Odena et al. 2017) and an embedding-conditioned GAN with a projection D (Miyato & Koyama 2018).
    "acgan-mnist": _merge(_DCGAN_BASE, {"model": {"conditional": "acgan"}}),
    "cgan-mnist": _merge(_DCGAN_BASE, {"model": {"conditional": "embedding"}}),
    # The ganhacks kitchen sink on top of DCGAN: smoothing, noisy labels, instance noise, replay, EMA, minibatch
    # stddev.
    "ganhacks-mnist": _merge(_DCGAN_BASE, {
        "model": {"minibatch": "stddev"},
        "tricks": {"label_smoothing": 0.1, "label_flip": 0.03, "instance_noise": 0.1, "replay_size": 1024,
                   "replay_ratio": 0.25, "ema": 0.999},
    }),
    # 2D toy mixtures (mode-collapse studies): MLP G / D, 4 x 128 units, Gaussian z of size 2... 16,
    # non-saturating loss, Adam 1e-4 / 0.5 (as in the unrolled-GAN toy experiments), large batches.
    "toy-ring8": {
        "data": {"dataset": "ring8"},
        "model": {"arch": "mlp", "nz": 16, "hidden": 128, "depth": 3, "z_dist": "normal", "g_norm": "batch",
                  "d_norm": "none", "d_activation": "leaky_relu", "init": "default"},
        "loss": {"loss": "nonsaturating"},
        "optim": {"lr_g": 1e-3, "lr_d": 1e-3, "beta1": 0.5, "beta2": 0.999},
        "tricks": {"separate_batches": True},
        "run": {"batch_size": 256, "steps": 2000, "sample_every": 500, "checkpoint_every": 1000, "log_every": 100,
                "threads": 1},  # a tiny MLP: more threads only add overhead
    },
}
PRESETS["toy-grid25"] = _merge(PRESETS["toy-ring8"], {"data": {"dataset": "grid25"},
                                                     "run": {"steps": 5000}})
PRESETS["toy-ring8-pacgan"] = _merge(PRESETS["toy-ring8"], {"tricks": {"pack": 2}})
# SAGAN (Zhang et al. 2019), small: SNGAN-style residual G / D (Miyato et al. 2018) with self-attention at 8x8
# (a side both models have at 16, 32 and 64 px),
# spectral norm in G and D, hinge loss, TTUR (lr_d 4e-4, lr_g 1e-4, Adam beta1 0, beta2 0.9); average-pool
# downsampling in D (SNGAN); batch norm in G (fused BatchNormAct2d), no norm in D.
PRESETS["sagan-resnet-mnist"] = _merge(_DCGAN_BASE, {
    "model": {"arch": "resnet", "ngf": 32, "ndf": 32, "d_norm": "none", "d_activation": "relu", "downsample": "avgpool",
              "spectral_norm": True, "g_spectral_norm": True, "attention_res": 8},
    "loss": {"loss": "hinge"},
    "optim": {"lr_g": 1e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.9},
})
# Issue 13: Unrolled GAN (Metz et al. 2017: 5 unrolling steps on the ring), MGAN (Hoang et al. 2018) with 4
# generators, and VAE-GAN (Larsen et al. 2016) on the shipped digits.
PRESETS["toy-ring8-unrolled"] = _merge(PRESETS["toy-ring8"], {"loss": {"unrolled_steps": 5}})
PRESETS["toy-ring8-mgan"] = _merge(PRESETS["toy-ring8"], {"model": {"num_generators": 4}})
PRESETS["vae-gan-mnist"] = _merge(_DCGAN_BASE, {"loss": {"hybrid": "vae_gan"}})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def default_preset(dataset: Optional[str]) -> str:
    from ..data import TOY_DATASETS

    if dataset in TOY_DATASETS:
        return f"toy-{dataset}"
    return "dcgan-mnist"


def preset_config(name: str) -> TrainConfig:
    if name in (None, "none"):
        return TrainConfig()
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(preset_names())}")
    cfg = apply_overrides(TrainConfig(), PRESETS[name], where=f"preset {name}")
    cfg.preset = name
    return cfg


# ----------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------

def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return data


def to_yaml(cfg: TrainConfig, *, only_changes_from: Optional[TrainConfig] = None) -> str:
    d = cfg.to_dict()
    if only_changes_from is not None:
        base = only_changes_from.to_dict()
        d = {s: {k: v for k, v in d[s].items() if base[s][k] != v} for s in SECTIONS}
        d = {s: v for s, v in d.items() if v}
        if cfg.preset:
            d = {"preset": cfg.preset, **d}
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=False)


def preset_yaml(name: str) -> str:
    """The preset as a YAML file: a comment line, then the options it changes from the plain defaults."""
    cfg = preset_config(name)
    d = cfg.to_dict()
    base = TrainConfig().to_dict()
    body = {s: {k: v for k, v in d[s].items() if base[s][k] != v} for s in SECTIONS}
    body = {s: v for s, v in body.items() if v}
    return (f"# fastgan train preset {name!r} (generated from fastgan.train.config.PRESETS; "
            f"`fastgan train --config this-file` = `fastgan train --preset {name}`)\npreset: none\n"
            + yaml.safe_dump(body, sort_keys=False, default_flow_style=False))


def write_preset_files(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in preset_names():
        path = os.path.join(directory, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(preset_yaml(name))
        paths.append(path)
    return paths


def load_config(path: Optional[str] = None, preset: Optional[str] = None, overrides: Optional[dict] = None,
                sets=None, validate_it: bool = True) -> TrainConfig:
    """Build a configuration: preset, then the YAML file, then ``overrides`` (flag values), then ``sets``.

    ``overrides`` maps keys to values (``None`` values are skipped: flags not given); ``sets`` is a list of
    ``key=value`` strings.  The preset comes from ``preset``, else the file's ``preset:`` / ``base:``, else the
    default for the data set.
    """
    file_data = read_yaml(path) if path else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    set_values = parse_set(sets)
    name = preset or file_data.get("preset") or file_data.get("base")
    if name is None:
        dataset = None
        for source in (set_values, overrides, dict(flatten(file_data, where=path or "config"))):
            for key, value in source.items():
                if key in ("dataset", "data.dataset"):
                    dataset = value
            if dataset is not None:
                break
        name = default_preset(dataset)
    cfg = preset_config(name)
    cfg.preset = None if name == "none" else name
    errors = []
    for data, where in ((file_data, path or "config"), (overrides, "command line"), (set_values, "--set")):
        try:
            apply_overrides(cfg, data, where=where)
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        raise ConfigError(errors)
    if validate_it:
        validate(cfg)
    return cfg


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------

def _check_fields(cfg: TrainConfig) -> list[str]:
    errors = []
    for key, f in field_table().items():
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            errors.append(f"{key}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("minimum") is not None and value < meta["minimum"]:
                errors.append(f"{key}: must be >= {meta['minimum']}, got {value!r}")
            if meta.get("maximum") is not None and value > meta["maximum"]:
                errors.append(f"{key}: must be <= {meta['maximum']}, got {value!r}")
    return errors


def _as_saved(error: str, cfg: TrainConfig, saved: Optional[dict]) -> bool:
    """Whether the option an error line names ("section.name: ...") holds the value it has in ``saved``."""
    if saved is None:
        return False
    section, _, name = error.split(":", 1)[0].partition(".")
    value = getattr(getattr(cfg, section, None), name, None)
    before = (saved.get(section) or {}).get(name)
    return value == before or (isinstance(value, (list, tuple)) and list(value) == list(before or []))


def validate(cfg: TrainConfig, *, resumed_from: Optional[dict] = None) -> TrainConfig:
    """Raise ConfigError (one line per problem) for bad values and impossible combinations.

    ``resumed_from``: the configuration (a dict) of the checkpoint ``cfg`` resumes.  The checks for new runs
    only (options without effect, BCE targets above 1) then leave out the options whose value is the
    checkpoint's: a checkpoint written before them resumes as it trained, while a value changed on resume
    (through the Python API, which does not lock options) is checked as a new run's."""
    from .config_checks import check_combinations, check_new_run, check_types

    type_errors = check_types(cfg)
    if type_errors:  # the checks below compare values and assume their types
        raise ConfigError(type_errors)
    errors = _check_fields(cfg)
    d, m, lo, t, r = cfg.data, cfg.model, cfg.loss, cfg.tricks, cfg.run
    toy = cfg.is_toy()
    arch = cfg.resolved_arch()
    if toy and arch == "dcgan":
        errors.append(f"model.arch: 'dcgan' needs an image data set, but data.dataset is {d.dataset!r} (use mlp)")
    if not toy and arch == "mlp":
        errors.append(f"model.arch: 'mlp' is for the 2D toy sets, but data.dataset is {d.dataset!r} (use dcgan)")
    if arch == "dcgan" and (d.image_size < 8 or d.image_size & (d.image_size - 1)):
        errors.append(f"data.image_size: DCGAN needs a power of two >= 8 (32 or 64), got {d.image_size}")
    if r.best_metric and not r.eval_every:
        errors.append(f"run.best_metric: {r.best_metric!r} needs periodic evaluation (set run.eval_every)")
    if arch == "mlp":
        for key, value in (("g_norm", m.g_norm), ("d_norm", m.d_norm)):
            if value == "instance":
                errors.append(f"model.{key}: 'instance' needs images; use 'layer' for the MLP of toy data")
        if m.downsample != "stride":
            errors.append("model.downsample: avgpool applies to the DCGAN discriminator, not the MLP")
    adversarial_bce = lo.loss in ("minimax", "nonsaturating", "lsgan")
    for key, on in (("label_smoothing", t.label_smoothing > 0), ("random_labels", t.random_labels),
                    ("label_flip", t.label_flip > 0)):
        if on and not adversarial_bce:
            errors.append(f"tricks.{key}: label tricks need a loss with targets (minimax, nonsaturating, lsgan), "
                          f"not {lo.loss!r}")
    if t.label_smoothing > 0 and t.random_labels:
        errors.append("tricks.label_smoothing and tricks.random_labels both set targets; turn one off")
    for key in ("real_label_range", "fake_label_range"):
        rng = getattr(t, key)
        if len(rng) != 2 or rng[0] > rng[1]:
            errors.append(f"tricks.{key}: expected [low, high] with low <= high, got {rng!r}")
    if lo.penalty in ("wgan-gp", "wgan-lp", "dragan", "r1", "r2") and m.d_norm == "batch":
        errors.append(f"model.d_norm: batch norm mixes samples, so the per-sample gradients of penalty "
                      f"{lo.penalty!r} are wrong; use layer, instance or none")
    if lo.penalty != "none" and lo.clip_weights > 0:
        errors.append("loss.clip_weights: weight clipping and a gradient penalty are alternatives; pick one")
    if lo.penalty_every > 1 and lo.penalty == "none":
        errors.append("loss.penalty_every: set loss.penalty too")
    if lo.feature_matching_only and lo.feature_matching <= 0:
        errors.append("loss.feature_matching_only: needs loss.feature_matching > 0 (its weight)")
    if m.conditional != "none" and t.pack > 1:
        errors.append("tricks.pack: packing mixes the labels of a pack; use it without model.conditional")
    if t.pack > 1 and r.batch_size % t.pack:
        errors.append(f"tricks.pack: run.batch_size {r.batch_size} must be a multiple of the pack size {t.pack}")
    if m.minibatch == "stddev":
        per_d = r.batch_size // t.pack
        group = min(m.stddev_group, per_d)
        sizes = [per_d] + ([2 * per_d] if not t.separate_batches else [])
        if any(n % group for n in sizes):
            errors.append(f"model.stddev_group: the D batch ({per_d}) must be a multiple of the group size "
                          f"{m.stddev_group}")
    if r.cudnn_benchmark == "on" and r.deterministic:
        errors.append("run.cudnn_benchmark: 'on' picks convolution algorithms by timing, which differs from run to "
                      "run; not with run.deterministic (leave it 'auto')")
    if r.compile_g and m.g_norm == "vbn":
        errors.append("run.compile_g: not with model.g_norm='vbn' (its reference pass switches the layers' mode)")
    # (a VBN reference batch of < 2: the field's minimum; < 2 packs for D: config_checks)
    if t.replay_size and t.replay_size < r.batch_size * t.replay_ratio:
        errors.append(f"tricks.replay_size: {t.replay_size} is smaller than the replayed part of a batch "
                      f"({r.batch_size} x {t.replay_ratio})")
    if r.device not in ("auto", "cpu") and not r.device.startswith("cuda"):
        errors.append(f"run.device: expected auto, cpu, cuda or cuda:N, got {r.device!r}")
    errors += check_combinations(cfg)
    errors += [line for line in check_new_run(cfg) if not _as_saved(line, cfg, resumed_from)]
    errors += issue13_checks(cfg)
    from .algos import config_errors  # issue 13's options
    from .graph_step import config_errors as cuda_graph_errors

    errors += config_errors(cfg)
    errors += cuda_graph_errors(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


# ----------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------

def describe_options(tricks_only: bool = False) -> str:
    """A text table of every option: key, default, doc [source]."""
    lines = []
    current = None
    for key, f in field_table().items():
        meta = f.metadata
        if tricks_only and not meta.get("trick"):
            continue
        section = key.split(".", 1)[0]
        if section != current:
            lines.append(f"{section}:")
            current = section
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        src = f"  [{meta['source']}]" if meta.get("source") else ""
        mark = "*" if meta.get("trick") else " "
        lines.append(f" {mark}{key} = {default!r}: {meta['doc']}{src}")
    return "\n".join(lines)


def tricks() -> dict:
    """{'section.field': (doc, source)} for every stabilisation trick option."""
    return {k: (f.metadata["doc"], f.metadata["source"]) for k, f in field_table().items()
            if f.metadata.get("trick")}


if __name__ == "__main__":  # python -m fastgan.train.config --write-presets configs
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write-presets":
        for p in write_preset_files(sys.argv[2]):
            print(p)
    else:
        print(describe_options())
