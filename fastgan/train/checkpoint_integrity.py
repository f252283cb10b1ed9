"""Checkpoint integrity: a checksum of the contents, and one clear line for a file that is not a checkpoint.

The checksum is a SHA-256 over a canonical walk of the saved dict (every
key, number and string, and every tensor's dtype, shape and raw bytes),
stored in the checkpoint itself under ``"checksum"``.  It is not a hash of
the file's bytes, so the file stays a plain ``torch.save``'d dict that any
tool (``torch.load``, ``fastgan eval``) reads as before; and it catches what
``torch.load`` does not: a flipped byte inside a tensor's storage loads
without complaint (the zip records' CRCs are not checked on read).
Checkpoints written before the checksum existed have no ``"checksum"`` entry
and load as before (nothing to verify).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Optional

import torch

CHECKSUM_KEY = "checksum"
ALGORITHM = "sha256-state-v1"


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().data)  # raw bytes, any dtype (bf16 included)
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        # Sorted so the digest does not depend on insertion order; keys may mix ints and strings.
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # torch.load may give back either for the same value
        h.update(b"L%d" % len(obj))
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(type(obj).__name__.encode() + b":" + repr(obj).encode() + b";")
    else:  # anything else weights_only can hold (torch.dtype, torch.Size, ...): by its text
        h.update(b"O" + type(obj).__name__.encode() + b":" + str(obj).encode() + b";")


def state_digest(state: dict) -> str:
    """SHA-256 (hex) of a checkpoint dict's contents, its ``checksum`` entry left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def with_checksum(state: dict) -> dict:
    """A copy of ``state`` carrying the checksum of its contents."""
    out = dict(state)
    out[CHECKSUM_KEY] = {"algorithm": ALGORITHM, "sha256": state_digest(out)}
    return out


def checksum_problem(state: dict) -> Optional[str]:
    """None when the stored checksum matches (or there is none: an older checkpoint), else what is wrong."""
    stored = state.get(CHECKSUM_KEY)
    if stored is None:
        return None
    if not isinstance(stored, dict) or stored.get("algorithm") != ALGORITHM or not isinstance(stored.get("sha256"), str):
        return f"its checksum entry is not understood ({stored!r:.80})"
    actual = state_digest(state)
    if actual != stored["sha256"]:
        return (f"its contents do not match their checksum (sha256 {stored['sha256'][:12]}... stored, "
                f"{actual[:12]}... computed): the file was damaged after it was written")
    return None


# ----------------------------------------------------------------------------
# What is this file?
# ----------------------------------------------------------------------------

def _zip_is_truncated(path: str, size: int) -> bool:
    """A torch file is a zip archive whose directory sits at the end; a cut-short write loses it."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 65_557))  # the end record is within the last 64 KiB + 22 bytes
        return b"PK\x05\x06" not in f.read()


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def describe_unreadable(path: str, exc: BaseException) -> str:
    """One line saying why ``torch.load`` could not read ``path`` (empty, truncated, text, pickled code, ...)."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(512)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message carries terminal colour codes
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    unsupported = [ln for ln in lines if "Unsupported global" in ln]
    if unsupported and (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        # a readable torch / pickle file holding classes (a whole nn.Module, ...)
        return ("it holds pickled Python objects, not a fastgan training checkpoint "
                f"({unsupported[0][:160]}); checkpoints are loaded with weights_only=True, never unpickling code")
    if head.startswith(b"PK\x03\x04"):
        if _zip_is_truncated(path, size):
            return (f"it is truncated ({size} bytes; the end of its zip archive is missing: "
                    "the write was cut short or the copy is incomplete)")
        return f"it is a damaged torch file ({(lines or [type(exc).__name__])[0][:160]})"
    if head[:1] == b"\x80":
        return f"it is a damaged or truncated pickle / legacy torch file ({(lines or [type(exc).__name__])[0][:160]})"
    if _looks_like_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:40] if head.strip() else ""
        return f"it is a text file (starting {first!r}), not a torch checkpoint"
    return f"it is not a torch file ({size} bytes of unrecognised content, starting {head[:8].hex()})"


def describe_foreign(obj) -> str:
    """What a ``torch.load``-able object that is not a fastgan training checkpoint holds."""
    if isinstance(obj, torch.Tensor):
        return f"it holds a single tensor {tuple(obj.shape)}"
    if isinstance(obj, dict):
        kind = obj.get("format", obj.get("kind"))
        if kind is not None:
            return f"it is a {kind!r} file"
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"it holds {len(obj)} tensors (a model state_dict?), not a training checkpoint"
        keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        return f"it holds a dict with keys {keys or '(none)'} and no 'format': 'fastgan-train' entry"
    return f"it holds a {type(obj).__name__}"
