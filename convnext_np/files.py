"""The files of a model on disk: which weights file a directory holds, the shards a sharded index
names, reading any of them into a state dict, and writing a file atomically.

The layout is Hugging Face's (``transformers`` ``modeling_utils``): a directory holds one of
:data:`WEIGHT_FILES`, in the order the loader prefers them; a ``*.index.json`` maps every tensor
name to the shard file beside it that holds it (``{"weight_map": {name: shard}}``).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import numpy as np

from . import torch_pickle, weights
from .errors import WeightsError
from .guards import read_json_file
from .safetensors_file import SafetensorsFile

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt")


def find_weights(directory: Path) -> Path | None:
    """The first of :data:`WEIGHT_FILES` that ``directory`` holds, else None."""
    return next((Path(directory) / n for n in WEIGHT_FILES if (Path(directory) / n).is_file()), None)


def read_shard_index(index_path: Path, where=None) -> dict:
    """The ``weight_map`` of a shard index (tensor name -> shard file name), every shard checked
    to be a weights file beside the index: no folder part (``../``), never another index (an
    index listing itself would recurse forever). ``where`` names the index in errors (default:
    its path)."""
    where = index_path if where is None else where
    index = read_json_file(index_path, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (isinstance(weight_map, dict)
            and all(isinstance(v, str) for v in weight_map.values())):
        raise WeightsError(f"{where}: not a valid shard index: expected "
                           '{"weight_map": {tensor name: shard file name}}')
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or "\\" in shard or shard.endswith(".index.json") \
                or not shard.endswith((".safetensors", *PICKLE_SUFFIXES)):
            raise WeightsError(f"{where}: shard {shard!r} is not a valid shard: not a weights "
                               "file name beside the index")
    return weight_map


def shard_names(index_path: Path, where=None) -> list:
    """The shard files a shard index names, sorted (see :func:`read_shard_index`)."""
    return sorted(set(read_shard_index(index_path, where).values()))


def read_state_dict(path: Path) -> dict:
    """name -> array for one weights file or a sharded index; arrays may be memory-mapped."""
    path = Path(path)
    name = path.name
    if name.endswith(".index.json"):
        return _read_sharded(path)
    if name.endswith(".safetensors"):
        f = SafetensorsFile(path)
        return {k: f.tensor(k) for k in f.keys()}
    if name.endswith(PICKLE_SUFFIXES):
        obj = torch_pickle.load(path)
        state_dict = weights.unwrap(obj, str(path))
        bad = [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]
        if bad:
            raise WeightsError(f"{path}: entry {bad[0]!r} is a {type(state_dict[bad[0]]).__name__}, "
                               "not a tensor")
        return state_dict
    raise WeightsError(f"{path}: unknown weights format; expected .safetensors, "
                       f"{', '.join(PICKLE_SUFFIXES)} or a *.index.json")


def _read_sharded(index_path: Path) -> dict:
    """The tensors of every shard an index lists, each tensor in the shard the index says."""
    weight_map = read_shard_index(index_path)
    state_dict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise WeightsError(f"{index_path}: shard {shard!r} is missing")
        part = read_state_dict(shard_path)
        for key in part:
            if weight_map.get(key) != shard:
                raise WeightsError(f"{shard_path}: tensor {key!r} is not listed for this shard "
                                   f"in {index_path.name}")
        state_dict.update(part)
    absent = [k for k in weight_map if k not in state_dict]
    if absent:
        raise WeightsError(f"{index_path}: tensor {absent[0]!r} is listed but not in "
                           f"shard {weight_map[absent[0]]!r}")
    return state_dict


def atomic_write(path: Path, writer) -> None:
    """Write ``path`` all at once: ``writer(tmp)`` fills a temporary file beside it, which is then
    renamed over ``path`` (``os.replace``), so a reader never sees half a file and a failed or
    interrupted write leaves what was there. The folder is created if needed.

    The file gets the mode any new file of the user gets (0666 less the umask), as if written in
    place, where ``tempfile.mkstemp`` would make it 0600: the temporary file is created with
    ``os.open(..., 0o666)``, which applies the umask, and its mode is set again after
    ``writer``, which may have replaced the file (safetensors' ``save_file`` leaves it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        writer(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
