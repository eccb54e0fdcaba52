"""``from_pretrained`` and ``save_pretrained``: official weight files and directories.

A local directory in Hugging Face layout (``config.json`` + ``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``), a timm directory (``config.json``
with ``architecture`` + weights), or a bare weights file (``.safetensors``, ``.bin``,
``.pth``/``.pt``) whose architecture is read off the tensors. Loading is strict and all-or-
nothing: any problem raises :class:`WeightsError` before a model exists.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from . import torch_pickle, weights
from .config import MODEL_TYPES, V2_VARIANTS, VARIANTS, ConvNextConfig, read_json_object
from .errors import WeightsError
from .labels import imagenet_labels
from .model import ConvNeXt
from .preprocess import ImageProcessor
from .safetensors_file import SafetensorsFile

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt")


def read_state_dict(path: Path) -> dict:
    """name -> array for one weights file or a sharded index; arrays may be memory-mapped."""
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
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index_path}: not a valid shard index: {e!r}") from None
    state_dict = {}
    for shard in shards:
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


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise WeightsError(f"{directory}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def _config_from_tensors(arch: dict, scheme: str, labels=None) -> ConvNextConfig:
    """A config for weights that came without an HF config.json (timm, facebookresearch, bare).

    Labels: ``labels`` if given (timm's ``label_names``), else the ImageNet names for a head of
    1000 or 21841 classes, else ``LABEL_i``.
    """
    num_labels = arch["num_labels"]
    if labels is None or len(labels) != num_labels:
        labels = imagenet_labels(num_labels) or [f"LABEL_{i}" for i in range(num_labels)]
    eps = weights.default_norm_eps(arch["hidden_sizes"])
    # transformers' ConvNextConfig default final-LN eps is 1e-12; timm and FB use their norm eps.
    head_eps = ConvNextConfig.layer_norm_eps if scheme == "hf" else eps
    return ConvNextConfig(depths=arch["depths"], hidden_sizes=arch["hidden_sizes"], norm_eps=eps,
                          layer_norm_eps=head_eps, model_type=arch["model_type"],
                          id2label=dict(enumerate(labels)))


def _family(model_type: str) -> str:
    return "ConvNeXt V2 (GRN blocks)" if model_type == "convnextv2" else "ConvNeXt V1 (layer scale)"


def load_local(path: Path, *, backend: str = "auto", num_threads: int | None = None) -> ConvNeXt:
    """A model from a local directory or weights file (see the module docstring)."""
    path = Path(path)
    config_json = read_json_object(path / "config.json") if (path / "config.json").is_file() else None
    weights_path = _find_weights(path) if path.is_dir() else path
    where = str(weights_path)
    state_dict = read_state_dict(weights_path)
    scheme = weights.detect_scheme(state_dict, where)
    hf = weights.to_hf_names(state_dict, scheme, where)
    arch = weights.infer_architecture(hf, where)
    hf = weights.add_fcmae_norm(hf, arch)

    if config_json is not None and "architecture" in config_json:  # timm layout
        if not str(config_json["architecture"]).startswith("convnext"):
            raise WeightsError(f"{path / 'config.json'}: architecture "
                               f"{config_json['architecture']!r} is not a ConvNeXt")
        v2 = str(config_json["architecture"]).startswith("convnextv2")
        if v2 != (arch["model_type"] == "convnextv2"):
            raise WeightsError(f"{path / 'config.json'}: architecture {config_json['architecture']!r} "
                               f"is {_family('convnextv2' if v2 else 'convnext')}, but the tensors in "
                               f"{where} are {_family(arch['model_type'])}")
        variant = str(config_json["architecture"]).removeprefix("convnextv2_" if v2 else "convnext_")
        table = V2_VARIANTS if v2 else VARIANTS
        if variant in table and (tuple(arch["depths"]), tuple(arch["hidden_sizes"])) != table[variant][:2]:
            raise WeightsError(f"{path / 'config.json'}: architecture {config_json['architecture']!r} "
                               f"has depths {list(table[variant][0])} and widths "
                               f"{list(table[variant][1])}, but the tensors in {where} have "
                               f"{arch['depths']} and {arch['hidden_sizes']}")
        declared = config_json.get("num_classes", arch["num_labels"])
        if declared != arch["num_labels"]:
            raise WeightsError(f"{path / 'config.json'}: num_classes is {declared}, but the "
                               f"head in {where} has {arch['num_labels']} classes")
        config = _config_from_tensors(arch, scheme, config_json.get("label_names"))
    elif config_json is not None:  # Hugging Face layout
        model_type = config_json.get("model_type")
        if model_type not in MODEL_TYPES:
            raise WeightsError(f"{path / 'config.json'}: model_type {model_type!r} is not a ConvNeXt "
                               f"(expected one of {', '.join(MODEL_TYPES)})")
        if model_type != arch["model_type"]:
            raise WeightsError(f"{path / 'config.json'}: model_type {model_type!r} is "
                               f"{_family(model_type)}, but the tensors in {where} are "
                               f"{_family(arch['model_type'])}")
        config = ConvNextConfig.from_dict(config_json, where=path / "config.json")
        if arch["num_labels"] == 0:  # a ConvNextModel (no head): HF ignores num_labels then
            config.id2label = {}
        for field in ("depths", "hidden_sizes", "num_labels"):
            if getattr(config, field) != arch[field]:
                raise WeightsError(f"{path / 'config.json'}: {field} is {getattr(config, field)}, "
                                   f"but the tensors in {where} have {arch[field]}")
    else:  # a bare weights file
        config = _config_from_tensors(arch, scheme)

    params = weights.to_params(hf, config, where)
    return ConvNeXt(config, params, backend=backend, preprocessor=ImageProcessor.from_pretrained(path),
                    source=str(path), num_threads=num_threads)


def save_pretrained(model: ConvNeXt, directory) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` in Hugging
    Face layout, each atomically. transformers' ``ConvNextForImageClassification`` and
    ``AutoImageProcessor`` load the result. A timm preprocessing that transformers cannot express
    (``squash`` below 384) writes no ``preprocessor_config.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = weights.to_hf_tensors(model.params, model.config)

    def write(name, writer):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    write("model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    write("config.json", model.config.to_json_file)
    if model.preprocessor is not None:
        try:
            processor = model.preprocessor.to_hf_dict()
        except ValueError:
            return
        write("preprocessor_config.json",
              lambda p: Path(p).write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8"))


def from_pretrained(source, *, revision: str = "main", cache_dir=None, backend: str = "auto",
                    num_threads: int | None = None) -> ConvNeXt:
    """Load a ConvNeXt from a local directory or weights file, or by name (``shared/api.md``).

    A local path always wins and never touches the network. A name (hub id, timm name or alias
    from :mod:`convnext_np.checkpoints`) is resolved from the Hugging Face cache, else
    downloaded (:func:`convnext_np.hub.resolve`); ``revision`` and ``cache_dir`` apply to names.
    ``num_threads`` sets the threads of every forward pass (:mod:`convnext_np.threads`).
    """
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return load_local(path, backend=backend, num_threads=num_threads)
    from . import hub  # imported on first use: plain local loading needs no HTTP machinery

    model = load_local(hub.resolve(str(source), revision=revision, cache_dir=cache_dir),
                       backend=backend, num_threads=num_threads)
    model.source = str(source)
    return model
