"""The checks every reader of untrusted input goes through: JSON, image decoding, claimed sizes,
output destinations.

A file's claims (a label count, a tensor shape, a nesting depth) are checked against sane bounds
and against what the file holds before anything proportional to the claim is allocated, so a
small file cannot make the loader spend gigabytes or minutes before it says no.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from .errors import ConvNextError, ImageError, WeightsError

# The largest classification head published for a ConvNeXt is ImageNet-22k's 21843 classes (the
# facebookresearch checkpoints); a head claiming more than this is refused before any label
# string is made.
MAX_NUM_LABELS = 100_000
# Model configs, preprocessing configs, safetensors headers and shard indexes are a few levels
# deep; Python's own parser would recurse until RecursionError on 100000 nested brackets.
MAX_JSON_DEPTH = 32
# The largest published ConvNeXt evaluation resolution is 512; a preprocessing config asking
# for more than four times that is refused (a forward pass at 30000 x 30000 would run for hours).
MAX_INPUT_SIZE = 2048


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(text, where, what: str = "JSON", error=WeightsError):
    """Parse JSON ``text`` (str or bytes), the ``what`` of ``where``: at most
    :data:`MAX_JSON_DEPTH` levels of arrays and objects, every number finite (``NaN``,
    ``Infinity`` and ``1e999`` are refused). Problems raise ``error`` naming ``where``."""
    def fail(problem):
        return error(f"{where}: cannot read {what}: {problem}")

    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise fail(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"not valid JSON: {e}") from None
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise fail(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)
        elif isinstance(value, float) and not math.isfinite(value):
            raise fail(f"JSON number {value} is not finite")
    return obj


def read_json_file(path, what: str = "JSON", error=WeightsError):
    """:func:`load_json` of a file; an unreadable file raises ``error`` naming it too."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e}") from None
    return load_json(data, path, what, error)


def check_num_labels(n, where) -> int:
    """``n`` if it is a class count a model may have (0, headless, to :data:`MAX_NUM_LABELS`)."""
    if not (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_NUM_LABELS):
        raise WeightsError(f"{where}: {n!r} classes is not a plausible classification head "
                           f"(0 to {MAX_NUM_LABELS:,})")
    return n


@contextlib.contextmanager
def decoding(where: str | None):
    """Any exception raised while decoding the image ``where`` becomes its :class:`ImageError`
    (whose message starts with ``where``, unless it is None).

    Pillow's plugins raise whatever their format code meets (``NotImplementedError`` for a DDS
    header it does not handle, ``struct.error``, ``IndexError``, ``MemoryError`` ...); for a
    caller they all mean one thing: this image cannot be used, the next one can.
    """
    try:
        yield
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - deliberately every exception, see the docstring
        prefix = "" if where is None else f"{where}: "
        if isinstance(e, FileNotFoundError):
            raise ImageError(f"{prefix}no such file") from None
        detail = str(e) or type(e).__name__
        if not isinstance(e, (OSError, ValueError, SyntaxError)):
            detail = f"{type(e).__name__}: {detail}"
        raise ImageError(f"{prefix}cannot read image: {detail}") from None


def check_output_file(path) -> Path:
    """``path`` if a file can be written there: its folder exists and is writable, and it is
    not itself a folder. Checked before any compute, so a mistake does not lose the work."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ConvNextError(f"{path}: is a directory, expected a file name")
    if not parent.is_dir():
        raise ConvNextError(f"{path}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConvNextError(f"{path}: not writable")
    return path


def check_output_dir(path) -> Path:
    """``path`` if it is a writable folder, or could be created as one (the first existing
    folder above it is writable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConvNextError(f"{path}: exists and is not a directory")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConvNextError(f"{path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConvNextError(f"{path}: {existing} is not writable")
    return path
