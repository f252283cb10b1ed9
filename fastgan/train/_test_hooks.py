"""Hooks for the crash tests (``tests/test_train_faults.py``); inert unless their environment variable is set.

``FASTGAN_TEST_PAUSE_CHECKPOINT_AT_STEP=N``: the checkpoint of step N is written only half-way (flushed and
fsync'd into its temporary file), then the file named by ``FASTGAN_TEST_PAUSE_MARKER`` is created and the
process sleeps, so that a test can SIGKILL it in the middle of a checkpoint write.
"""
from __future__ import annotations

import io
import os
import time
from typing import Callable

import torch

PAUSE_ENV = "FASTGAN_TEST_PAUSE_CHECKPOINT_AT_STEP"
MARKER_ENV = "FASTGAN_TEST_PAUSE_MARKER"


def checkpoint_writer(state: dict) -> Callable:
    """``write(fileobj)`` for the checkpoint ``state``: ``torch.save``, or the pausing writer above."""
    at = os.environ.get(PAUSE_ENV)
    if not at or int(state.get("step", -1)) != int(at):
        return lambda f: torch.save(state, f)

    def write(f):
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        marker = os.environ.get(MARKER_ENV)
        if marker:
            with open(marker, "w") as m:
                m.write(str(os.getpid()))
        time.sleep(600)  # the test kills us here
        f.write(data[len(data) // 2:])

    return write
