"""Reproducible experiments that write tables for the docs (``python -m fastgan.experiments.<name>``)."""
