"""The stabilisation tricks as small, separately testable pieces.

* :mod:`.labels`: one-sided / random label smoothing and noisy (flipped) labels.
* :mod:`.replay`: experience replay of old fakes.
* :mod:`.noise`: instance noise with a linear decay.
* :mod:`.ema`: an exponential moving average of G.
* :mod:`.history`: historical averaging, and the pool of old G / D snapshots to swap in.
* :mod:`.pack`: PacGAN packing.
* :mod:`.latent`: Gaussian / uniform z, slerp.

Which option turns each on, and its source: ``fastgan.train.config.tricks()``
(or ``fastgan train --list-options``).
"""
from .ema import EMA
from .history import HistoricalAverage, SnapshotPool
from .labels import d_targets
from .latent import sample_labels, sample_z, slerp, slerp_grid
from .noise import add_instance_noise, instance_noise_std
from .pack import pack, pack_size_ok
from .replay import ReplayBuffer

__all__ = ["EMA", "HistoricalAverage", "SnapshotPool", "d_targets", "sample_z", "sample_labels", "slerp",
           "slerp_grid", "instance_noise_std", "add_instance_noise", "pack", "pack_size_ok", "ReplayBuffer"]
