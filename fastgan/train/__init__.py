"""The GAN trainer: ``fastgan train`` / ``fastgan sample``.

* :mod:`.config`: :class:`TrainConfig` (sections data / model / loss / optim / tricks / run / monitor),
  named presets, YAML loading, ``--set`` overrides, validation (:class:`ConfigError`, one line per problem).
* :mod:`.trainer`: :class:`Trainer` and :func:`train`.
* :mod:`.losses`, :mod:`.tricks`: the losses and the stabilisation tricks.
* :mod:`.checkpoint`: exact-resume checkpoints, :func:`load_generator` and :func:`generate` for other tools.
* :mod:`.monitor`: the failure watch.  :mod:`.logs`: metrics.jsonl, plots, sample images.
"""
from .checkpoint import CheckpointError, generate, load_checkpoint, load_generator, save_checkpoint
from .config import PRESETS, ConfigError, TrainConfig, describe_options, load_config, preset_config, validate
from .monitor import FailureMonitor, TrainingDiverged
from .trainer import Trainer, train

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "load_config", "preset_config", "validate", "describe_options",
           "Trainer", "train", "load_generator", "generate", "load_checkpoint", "save_checkpoint", "CheckpointError",
           "FailureMonitor", "TrainingDiverged"]
