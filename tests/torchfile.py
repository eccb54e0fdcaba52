"""``torch.save`` files made without torch, opcode by opcode, for tests of the loader.

The layout is torch's own (torch/serialization.py, ``_save``): a zip with ``<root>/data.pkl``,
``<root>/version`` and one ``<root>/data/<key>`` per storage; the pickle (protocol 2) rebuilds
each tensor with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)``, the storage named by a persistent id
``("storage", torch.FloatStorage, key, "cpu", numel)``.
"""

import pickle
import struct
import zipfile

import numpy as np


class Tensor:
    """A tensor to pickle: ``storage`` (a float32 array) seen with size/stride/offset."""

    def __init__(self, storage, size=None, stride=None, offset=0, key=None):
        self.storage = np.ascontiguousarray(storage, np.float32).ravel()
        self.size = tuple(int(n) for n in (np.shape(storage) if size is None else size))
        if stride is None:
            stride = [int(np.prod(self.size[i + 1:])) for i in range(len(self.size))]
        self.stride, self.offset, self.key = tuple(int(s) for s in stride), int(offset), key


class Raw:
    """Pickle opcodes spliced in as they are (the body of another pickle, no PROTO/STOP)."""

    def __init__(self, ops: bytes):
        self.ops = ops


def pickled_body(obj) -> Raw:
    """``obj`` as Python's pickle writes it at protocol 2, to splice into a checkpoint."""
    data = pickle.dumps(obj, protocol=2)
    assert data[:2] == b"\x80\x02" and data[-1:] == b"."
    return Raw(data[2:-1])


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class _Writer:
    def __init__(self):
        self.storages = {}

    def op(self, obj) -> bytes:
        if isinstance(obj, Raw):
            return obj.ops
        if obj is None:
            return b"N"
        if obj is True or obj is False:
            return b"\x88" if obj else b"\x89"
        if isinstance(obj, int):
            if -2**31 <= obj < 2**31:
                return b"J" + struct.pack("<i", obj)
            data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            return b"\x8a" + bytes([len(data)]) + data  # LONG1
        if isinstance(obj, float):
            return b"G" + struct.pack(">d", obj)
        if isinstance(obj, str):
            data = obj.encode()
            return b"X" + struct.pack("<I", len(data)) + data
        if isinstance(obj, tuple):
            return b"(" + b"".join(map(self.op, obj)) + b"t"
        if isinstance(obj, list):
            return b"]" + (b"(" + b"".join(map(self.op, obj)) + b"e" if obj else b"")
        if isinstance(obj, dict):
            items = b"".join(self.op(k) + self.op(v) for k, v in obj.items())
            return b"}" + (b"(" + items + b"u" if obj else b"")
        if isinstance(obj, Tensor):
            key = obj.key or str(len(self.storages))
            self.storages[key] = obj.storage
            storage = b"(" + self.op("storage") + _global("torch", "FloatStorage") + self.op(key) \
                + self.op("cpu") + self.op(obj.storage.size) + b"tQ"  # BINPERSID
            hooks = _global("collections", "OrderedDict") + b")R"
            args = b"(" + storage + self.op(obj.offset) + self.op(obj.size) + self.op(obj.stride) \
                + self.op(False) + hooks + b"t"
            return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
        raise TypeError(f"cannot write {type(obj).__name__}")


def checkpoint_bytes(obj) -> tuple:
    """(data.pkl bytes, {key: storage array}) for ``obj``."""
    w = _Writer()
    return b"\x80\x02" + w.op(obj) + b".", w.storages


def write_checkpoint(path, obj, *, root="archive", pkl=None, compress_pkl=False):
    """Write ``obj`` as ``torch.save`` would; ``pkl`` replaces the data.pkl bytes."""
    data, storages = checkpoint_bytes(obj)
    with zipfile.ZipFile(path, "w") as zf:
        method = zipfile.ZIP_DEFLATED if compress_pkl else zipfile.ZIP_STORED
        zf.writestr(f"{root}/data.pkl", pkl if pkl is not None else data, compress_type=method)
        zf.writestr(f"{root}/version", "3\n")
        for key, array in storages.items():
            zf.writestr(f"{root}/data/{key}", array.astype("<f4").tobytes())
    return path
