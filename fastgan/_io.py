"""Crash-safe file writes: everything fastgan writes (checkpoints, caches,
sample grids, logs) goes through ``atomic_write`` so a killed process never
leaves a torn file behind."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Optional


def _umask() -> int:
    """The process's umask now: from /proc where it is there (reading it elsewhere means setting it, for a
    moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: str) -> int:
    """The mode ``path`` gets: its current one when it exists, else a plain new file's (0666 less the umask),
    not the 0600 of the temporary file it is written as."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable, *, before_replace: Optional[Callable[[], None]] = None) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    ``before_replace`` runs after the new content is durable and before it
    takes ``path``'s place (e.g. to keep the old file as a backup)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = _os_error_cause(exc)
        if cause is not None and cause is not exc:  # (torch.save reports a full disk as a RuntimeError)
            raise cause from exc
        raise
    fsync_dir(directory)


def _os_error_cause(exc: BaseException) -> Optional[OSError]:
    """The OSError (disk full, read-only, ...) behind ``exc``, following its chain of causes; None if none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_torch_save(obj, path: str) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def json_safe(value):
    """``value`` with every non-finite float written as a string ("inf", "nan"): JSON has no Infinity or NaN
    (Python writes them, and strict readers then refuse the file); tensors as their numbers."""
    import torch  # (lazily, as atomic_torch_save: this module is imported before anything needs torch)

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if torch.is_tensor(value):
        return json_safe(value.item() if value.numel() == 1 else value.tolist())
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def plural(n: int, word: str) -> str:
    """``1 step``, ``2 steps``: counts in log lines."""
    return f"{n} {word}" + ("" if n == 1 else "s")
