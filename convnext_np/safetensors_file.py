"""A validating, memory-mapping reader of safetensors files, NumPy only.

Format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data, offsets relative to its start. Everything in the header is checked against the file
before any tensor is touched. BF16, which NumPy lacks, is widened to float32 exactly.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import WeightsError
from .guards import load_json

DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
MAX_NDIM = 8  # a ConvNeXt tensor has at most 4 dimensions


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: bf16 is the top half of an f32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """The tensors of one file, as read-only arrays over a memory map (``.tensor(name)``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
                if n < 0 or size < 8:
                    raise WeightsError(f"{self.path}: not a safetensors file ({size} bytes, "
                                       "shorter than the 8-byte header length)")
                if n > min(MAX_HEADER_BYTES, size - 8):
                    raise WeightsError(f"{self.path}: header length {n} does not fit in the "
                                       f"file ({size} bytes); truncated or not safetensors")
                header_bytes = f.read(n)
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot read: {e}") from None
        header = load_json(header_bytes, self.path, "the header")
        if not isinstance(header, dict):
            raise WeightsError(f"{self.path}: header must be a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = {name: self._check_entry(name, e, size - self._data_start)
                         for name, e in header.items()}
        self._check_overlaps()
        self._map = None

    def _check_entry(self, name, entry, data_len):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise WeightsError(f"{where}: entry must have dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise WeightsError(f"{where}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
                and all(type(d) is int and 0 <= d < 2**48 for d in shape)):
            raise WeightsError(f"{where}: shape must be a list of at most {MAX_NDIM} "
                               f"non-negative ints, got {shape!r:.200}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise WeightsError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        if end > data_len:
            raise WeightsError(f"{where}: bytes {begin}..{end} lie outside the data "
                               f"({data_len} bytes); the file is truncated or the header lies")
        expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != expected:
            raise WeightsError(f"{where}: {dtype} {shape} needs {expected} bytes, "
                               f"data_offsets give {end - begin}")
        return dtype, tuple(shape), begin, end

    def _check_overlaps(self):
        spans = sorted((b, e, name) for name, (_, _, b, e) in self._entries.items() if e > b)
        for (_, e1, n1), (b2, _, n2) in zip(spans, spans[1:]):
            if b2 < e1:
                raise WeightsError(f"{self.path}: tensors {n1!r} and {n2!r} overlap")

    def keys(self):
        return self._entries.keys()

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple:
        return self._entries[name][1]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as stored (a read-only view of the map); BF16 comes back as float32."""
        dtype, shape, begin, _ = self._entries[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._map[self._data_start + begin:][: math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize]
        array = raw.view(DTYPES[dtype]).reshape(shape)
        return bf16_to_f32(array) if dtype == "BF16" else array
