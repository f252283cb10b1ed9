"""Tiny trainer settings shared by the trainer tests: CPU-sized models and data, nothing written but the log."""

TINY_IMAGE = ["image_size=16", "ngf=4", "ndf=4", "nz=8", "batch_size=8", "max_samples=256", "n_samples=16"]
TINY_TOY = ["hidden=16", "nz=4", "batch_size=32", "toy_samples=2000", "n_samples=4"]
QUIET = ["progress=false", "threads=1", "impl=ref", "log_every=1", "sample_every=0", "checkpoint_every=0",
         "plots=false"]
