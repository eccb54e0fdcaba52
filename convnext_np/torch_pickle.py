"""Read ``torch.save`` checkpoints (``pytorch_model.bin``, ``.pth``) without torch, safely.

``torch.save`` (torch >= 1.6) writes a zip: ``<root>/data.pkl`` is a pickle of the state dict
whose tensors refer, by persistent id ``("storage", StorageClass, key, location, numel)``, to
raw little-endian storages stored uncompressed in ``<root>/data/<key>``. The pickle is run by
an unpickler that resolves only the globals in ``ALLOWED_GLOBALS``, the few that rebuilding
tensors needs; any other global (``os.system``, ``builtins.eval``, ...) is refused before it
can be called. Storages are memory-mapped straight out of the zip.

The official facebookresearch training code saves ``{"model", "optimizer", "epoch", "scaler",
"args"}``, where ``epoch`` is a NumPy integer and ``args`` an ``argparse.Namespace``. Those two
are rebuilt as inert stand-ins (:class:`IgnoredObject`, and a NumPy scalar decoded from its raw
bytes), so the weights load; nothing of theirs is called. Everything else is still refused.

What a file claims is checked against what it holds before anything is allocated for it: a
``data.pkl`` is read only up to :data:`MAX_PICKLE_BYTES` (it may be deflate-compressed), a
storage must be as long as its tensors' views need, and no view may hold more elements than its
storage (``torch.zeros(1).expand(16000, 16000)`` is refused, not materialised).
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import struct
import zipfile

import numpy as np

from .errors import WeightsError
from .safetensors_file import bf16_to_f32

# A data.pkl holds the structure only (names, shapes, a few numbers), not the tensor data: about
# 125 bytes per tensor (the fixtures' pytorch_model.bin: 10261 bytes, 83 tensors), some 200 KB
# for convnext_xxlarge with its AdamW state. One opcode byte builds at most an empty container
# (under 100 bytes of Python objects), so this also bounds what unpickling can allocate.
MAX_PICKLE_BYTES = 8 * 1024 * 1024

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
        if math.prod(size) > array.size:  # overlapping strides (an expand): would materialise
            raise WeightsError(f"tensor of size {size} (stride {stride}) views more elements "
                               f"than its storage holds ({array.size})")
    view = np.lib.stride_tricks.as_strided(
        array[storage_offset:], shape=size, strides=[s * array.itemsize for s in stride],
        writeable=False)
    return bf16_to_f32(view) if is_bf16 else view


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class IgnoredObject:
    """An inert stand-in for an object of the training state (``argparse.Namespace``): the
    unpickler gives it its attributes as plain data, and nothing of the original class runs."""

    def __init__(self, kind: str):
        self.kind, self.state = kind, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<ignored {self.kind}>"


def _ignored_class(kind):
    """What ``NEWOBJ`` (``cls.__new__(cls)``) calls for a class the training state pickles."""

    class Ignored(IgnoredObject):
        def __new__(cls, *args, **kwargs):
            obj = object.__new__(cls)
            IgnoredObject.__init__(obj, kind)
            return obj

        def __init__(self, *args, **kwargs):
            pass

    Ignored.__qualname__ = Ignored.__name__ = f"Ignored[{kind}]"
    return Ignored


# The dtypes a NumPy scalar in a training checkpoint (an epoch, a step, a loss) can have.
_SCALAR_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _DTypeStandIn:
    """``numpy.dtype(name, align, copy)`` as a pickle rebuilds it, for numeric names only; its
    ``__setstate__`` takes just the byte order from the state tuple."""

    def __init__(self, name, align=False, copy=False):
        if not (isinstance(name, str) and name in _SCALAR_DTYPES):
            raise WeightsError(f"refusing NumPy dtype {name!r:.40}: only numeric scalars are allowed")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        if order not in ("<", ">", "|", "="):
            raise WeightsError(f"bad NumPy dtype state {state!r:.80}")
        self.dtype = self.dtype.newbyteorder(order if order in "<>" else "=")


def _latin1(text, encoding):
    """``_codecs.encode(text, "latin1")``: how protocol 2 stores the bytes of a NumPy scalar."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise WeightsError(f"refusing _codecs.encode with {encoding!r:.40}")
    return text.encode("latin1")


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar(dtype, bytes)``: the scalar decoded from its bytes."""
    if not isinstance(dtype, _DTypeStandIn) or not isinstance(data, bytes) \
            or len(data) != dtype.dtype.itemsize:
        raise WeightsError("bad NumPy scalar in the checkpoint")
    return np.frombuffer(data, dtype.dtype)[0]


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _Storage(name) for name in STORAGE_DTYPES},
    # The training state of the facebookresearch checkpoints: inert stand-ins (module docstring).
    ("argparse", "Namespace"): _ignored_class("argparse.Namespace"),
    ("numpy", "dtype"): _DTypeStandIn,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1,
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

        info = zf.getinfo(pkl[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise WeightsError(f"{path}: {pkl[0]} claims {info.file_size:,} bytes, more than the "
                               f"{MAX_PICKLE_BYTES:,} a checkpoint's structure needs")
        with zf.open(info) as data:  # reads at most file_size bytes, however it is compressed
            pickled = data.read(MAX_PICKLE_BYTES + 1)
        if len(pickled) > MAX_PICKLE_BYTES:
            raise WeightsError(f"{path}: {pkl[0]} is larger than {MAX_PICKLE_BYTES:,} bytes")
        return _SafeUnpickler(io.BytesIO(pickled), path, load_storage).load()
