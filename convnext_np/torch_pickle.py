"""Read ``torch.save`` checkpoints (``pytorch_model.bin``, ``.pth``) without torch, safely.

``torch.save`` (torch >= 1.6) writes a zip: ``<root>/data.pkl`` is a pickle of the state dict
whose tensors refer, by persistent id ``("storage", StorageClass, key, location, numel)``, to
raw little-endian storages stored uncompressed in ``<root>/data/<key>``. The pickle is run by
an unpickler that resolves only the globals in ``ALLOWED_GLOBALS``, the few that rebuilding
tensors needs; any other global (``os.system``, ``builtins.eval``, ...) is refused before it
can be called. Storages are memory-mapped straight out of the zip.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import pickle
import struct
import zipfile

import numpy as np

from .errors import WeightsError
from .safetensors_file import bf16_to_f32

STORAGE_DTYPES = {
    "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "DoubleStorage": "<f8", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _Storage:
    """A storage class named in the pickle; only its dtype matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    array, is_bf16 = storage
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or storage_offset < 0 or any(s < 0 for s in size + stride):
        raise WeightsError(f"bad tensor layout: offset {storage_offset}, size {size}, stride {stride}")
    if math.prod(size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= array.size:
            raise WeightsError(f"tensor of size {size} reaches element {last} of a storage "
                               f"of {array.size}")
    view = np.lib.stride_tricks.as_strided(
        array[storage_offset:], shape=size, strides=[s * array.itemsize for s in stride],
        writeable=False)
    return bf16_to_f32(view) if is_bf16 else view


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _Storage(name) for name in STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path, load_storage):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._path}: refusing to unpickle global {module}.{name}: only tensor storage "
                "is allowed (a checkpoint that needs more is unsafe or not a plain state dict)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _Storage)):
            raise WeightsError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        _, storage, key, _location, numel = pid
        return self._load_storage(storage, str(key), numel)


def load(path: str | os.PathLike) -> dict:
    """The object ``torch.save`` stored, tensors as read-only NumPy arrays (BF16 -> float32)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise WeightsError(f"{path}: legacy (pre torch 1.6) torch.save format is not supported; "
                               "re-save it with a recent torch or convert it to safetensors")
        raise WeightsError(f"{path}: not a torch checkpoint (not a zip archive)")
    try:
        return _load_zip(path)
    except WeightsError:
        raise
    except Exception as e:  # a damaged zip or pickle fails in many ways; all mean the same
        raise WeightsError(f"{path}: damaged torch checkpoint: {type(e).__name__}: {e}") from None


def _load_zip(path: str):
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise WeightsError(f"{path}: a torch checkpoint holds one data.pkl, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

        def load_storage(storage, key, numel):
            name = f"{root}data/{key}"
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise WeightsError(f"{path}: storage {name!r} is missing") from None
            itemsize = np.dtype(storage.dtype).itemsize
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != numel * itemsize:
                raise WeightsError(f"{path}: storage {name!r} is compressed or not "
                                   f"{numel} x {itemsize} bytes")
            # The data starts after the member's local header (30 bytes + name + extra field).
            name_len, extra_len = struct.unpack("<HH", buf[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.file_size > len(buf):
                raise WeightsError(f"{path}: storage {name!r} runs past the end of the file")
            array = np.frombuffer(buf, dtype=storage.dtype, count=numel, offset=start)
            return array, storage.name == "BFloat16Storage"

        with zf.open(pkl[0]) as data:
            return _SafeUnpickler(data, path, load_storage).load()
