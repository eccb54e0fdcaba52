"""The loaded model, :class:`ConvNeXt`, and ``from_pretrained`` and ``save_pretrained``:
official weight files and directories.

A local directory in Hugging Face layout (``config.json`` + ``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``), a timm directory (``config.json``
with ``architecture`` + weights), or a bare weights file (``.safetensors``, ``.bin``,
``.pth``/``.pt``) whose architecture is read off the tensors. Loading is strict and all-or-
nothing: any problem raises :class:`WeightsError` before a model exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from . import backbone, backends, family, heap, threads, weights
from .config import MODEL_TYPES, STRUCTURE_DEFAULTS, V2_VARIANTS, VARIANTS, ConvNextConfig, read_json_object
from .errors import WeightsError
from .files import WEIGHT_FILES, atomic_write, find_weights, read_state_dict
from .guards import check_num_labels
from .labels import imagenet_labels
from .model import ConvNextOutput, check_pixel_values, concatenate, run
from .preprocess import DINOV3_PREPROCESSING, ImageProcessor

def _config_from_tensors(arch: dict, scheme: str, labels=None, norm_eps=None,
                         hidden_act="gelu") -> ConvNextConfig:
    """A config for weights that came without an HF config.json (timm, facebookresearch, bare).

    Labels: ``labels`` if given (timm's ``label_names``), else the ImageNet names for a head of
    1000 or 21841 classes, else ``LABEL_i``. ``norm_eps`` and ``hidden_act``: what a timm
    architecture name says (:mod:`.family`); a bare file's eps is read off its widths.
    """
    num_labels = arch["num_labels"]
    if labels is None or len(labels) != num_labels:
        labels = imagenet_labels(num_labels) or [f"LABEL_{i}" for i in range(num_labels)]
    eps = norm_eps or weights.default_norm_eps(arch["hidden_sizes"])
    # transformers' ConvNextConfig default final-LN eps is 1e-12; timm and FB use their norm eps.
    head_eps = ConvNextConfig.layer_norm_eps if scheme == "hf" else eps
    return ConvNextConfig(depths=arch["depths"], hidden_sizes=arch["hidden_sizes"], norm_eps=eps,
                          layer_norm_eps=head_eps, id2label=dict(enumerate(labels)), hidden_act=hidden_act,
                          model_type=arch["model_type"], **arch["structure"])


def _family(model_type: str) -> str:
    return "ConvNeXt V2 (GRN blocks)" if model_type == "convnextv2" else "ConvNeXt V1 (layer scale)"


def _check_finite(tensors: dict, where: str) -> None:
    """Refuse NaN or infinite weights, naming the tensor: they would give NaN scores silently."""
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise WeightsError(f"{where}: tensor {name!r} holds NaN or infinite values")


class ConvNeXt:
    """A loaded ConvNeXt. Call it on float32 ``pixel_values`` (N, 3, H, W), NCHW as in HF.

    Build one with :func:`from_pretrained`; ``params`` is the tree that
    :func:`convnext_np.weights.to_params` makes. It lives here, with the loader, because
    :meth:`save_pretrained` writes what :func:`load_local` reads. A call is the network's
    :func:`convnext_np.model.run` on the model's backend and threads; the numpy backend runs
    the images of a batch in groups, one per thread (:mod:`convnext_np.threads`).
    """

    def __init__(self, config: ConvNextConfig, params: dict, *, backend: str = "auto",
                 preprocessor=None, source: str | None = None, num_threads: int | None = None,
                 out_features=None):
        self.config = config
        self.params = weights.read_only(params)
        # Stage names whose maps ``out.feature_maps`` returns (see backbone.feature_maps); their
        # LayerNorms are in params["backbone_norms"] (absent for DINOv3, which has none).
        self.out_features = list(out_features) if out_features else None
        self.backend = backends.resolve(backend)
        self.requested_backend = backend  # as asked for; a copy of the model asks for the same
        self._backend_by_name = backends.chosen_by_name(backend)
        self.num_threads = threads.check(num_threads)  # None: as the environment configures
        self.preprocessor = preprocessor
        self.source = source
        self._packed = False  # the Numba backend's weight panels made (kernels.pack_weights)

    def __repr__(self):
        variant = self.config.variant() or f"depths={self.config.depths}"
        if self.config.model_type == "convnextv2":
            variant = f"V2 {variant}"
        return (f"ConvNeXt({variant}, num_labels={self.config.num_labels}, "
                f"backend={self.backend!r}, source={self.source!r})")

    def __call__(self, pixel_values, output_hidden_states: bool = False) -> ConvNextOutput:
        x = check_pixel_values(pixel_values, self.config.num_channels)
        # Imported here, not at the top: `python -m convnext_np.warmup` imports the package first,
        # and runpy warns when the module it is about to run as __main__ is already imported.
        from . import warmup

        backend = warmup.serving(self.backend, self._backend_by_name)  # NumPy while Numba compiles
        ops = backends.get(backend)
        if backend == "numpy":
            heap.keep_freed_memory()  # once per process: its arrays' pages are reused, not faulted in anew
        if backend == "numba" and not self._packed:
            ops.pack_weights(self.params)  # while Numba's set-up may still run (backends.prepare)
            self._packed = True
        def forward(images):
            return run(self.params, self.config, images, ops=ops,
                       out_features=self.out_features, output_hidden_states=output_hidden_states)

        with threads.limit(backend, self.num_threads):
            groups = threads.image_groups(len(x), self.num_threads) if backend == "numpy" else 1
            if groups == 1:
                return forward(x)
            return concatenate(threads.over_images(forward, x, groups))

    def save_pretrained(self, directory) -> None:
        """Write the model in Hugging Face layout (see :func:`save_pretrained`)."""
        save_pretrained(self, directory)


def load_local(path: Path, *, backend: str = "auto", num_threads: int | None = None,
               out_features=None, out_indices=None) -> ConvNeXt:
    """A model from a local directory or weights file (see the module docstring)."""
    backends.prepare(backend)  # Numba's import and set-up in the background, while the weights are read
    path = Path(path)
    config_json = read_json_object(path / "config.json") if (path / "config.json").is_file() else None
    weights_path = find_weights(path) if path.is_dir() else path
    if weights_path is None:
        raise WeightsError(f"{path}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")
    where = str(weights_path)
    state_dict = read_state_dict(weights_path)
    scheme = weights.detect_scheme(state_dict, where)
    hf = weights.to_hf_names(state_dict, scheme, where)
    arch = weights.infer_architecture(hf, where)
    check_num_labels(arch["num_labels"], f"{where}: classifier")
    _check_finite(state_dict, where)
    backbone_norms = weights.pop_backbone_norms(hf, arch["hidden_sizes"], where)
    if not backbone_norms and not (config_json is not None and _is_backbone(config_json)):
        hf = weights.add_fcmae_norm(hf, arch)  # timm's FCMAE encoders: no head, no final norm
    arch["structure"] = weights.infer_structure(hf, scheme)
    # DINOv3 ConvNeXt: transformers' naming, or the original file (facebookresearch names + norms.3)
    if scheme == "dinov3" or (scheme == "fb" and "norms.3.weight" in state_dict):
        arch["model_type"] = "dinov3_convnext"

    if config_json is not None and "architecture" in config_json:  # timm layout
        if not (str(config_json["architecture"]).startswith("convnext")
                or family.timm_structure(str(config_json["architecture"]))):
            raise WeightsError(f"{path / 'config.json'}: architecture "
                               f"{config_json['architecture']!r} is not a ConvNeXt")
        v2 = str(config_json["architecture"]).startswith("convnextv2")
        if v2 != (arch["model_type"] == "convnextv2"):
            raise WeightsError(f"{path / 'config.json'}: architecture {config_json['architecture']!r} "
                               f"is {_family('convnextv2' if v2 else 'convnext')}, but the tensors in "
                               f"{where} are {_family(arch['model_type'])}")
        variant = str(config_json["architecture"]).removeprefix("convnextv2_" if v2 else "convnext_")
        table = V2_VARIANTS if v2 else VARIANTS
        sizes = table.get(variant)
        if sizes and (tuple(arch["depths"]), tuple(arch["hidden_sizes"])) != (sizes.depths, sizes.hidden_sizes):
            raise WeightsError(f"{path / 'config.json'}: architecture {config_json['architecture']!r} "
                               f"has depths {list(sizes.depths)} and widths "
                               f"{list(sizes.hidden_sizes)}, but the tensors in {where} have "
                               f"{arch['depths']} and {arch['hidden_sizes']}")
        declared = config_json.get("num_classes", arch["num_labels"])
        if declared != arch["num_labels"]:
            raise WeightsError(f"{path / 'config.json'}: num_classes is {declared}, but the "
                               f"head in {where} has {arch['num_labels']} classes")
        named = _check_timm_structure(str(config_json["architecture"]), arch, path / "config.json", where)
        tag = str((config_json.get("pretrained_cfg") or {}).get("tag", ""))
        if tag.startswith("dinov3"):  # timm's convnext_*.dinov3_lvd1689m: DINOv3 ConvNeXt weights
            arch["model_type"] = "dinov3_convnext"
        labels = config_json.get("label_names")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            raise WeightsError(f"{path / 'config.json'}: label_names must be a list of strings, "
                               f"got {labels!r:.80}")
        config = _config_from_tensors(arch, scheme, labels, **named)
    elif config_json is not None and config_json.get("model_type") == "dinov3_convnext":
        config = ConvNextConfig.from_dict(config_json, where=path / "config.json")
        config.id2label = {}  # DINOv3ConvNextModel has no head
        config.norm_eps = config.layer_norm_eps  # one eps for every norm in DINOv3ConvNextModel
        config.final_norm = not _is_backbone(config_json)
        _check_against_config(config, arch, path / "config.json", where)
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
        config.final_norm = not _is_backbone(config_json)  # a Backbone has no final LayerNorm
        _check_against_config(config, arch, path / "config.json", where)
    else:  # a bare weights file
        config = _config_from_tensors(arch, scheme)

    params = weights.to_params(hf, config, where)
    if out_features is None and out_indices is None:  # a Backbone checkpoint returns its own maps
        if config_json is not None and _is_backbone(config_json):
            out_features = config_json.get("out_features")
        elif backbone_norms:
            out_features = list(backbone_norms)
    out_features = backbone.resolve_out_features(out_features, out_indices)
    if out_features and config.model_type != "dinov3_convnext":
        params["backbone_norms"] = backbone.norm_params(out_features, backbone_norms, config.hidden_sizes)
    directory = path if path.is_dir() else path.parent
    has_own = (directory / "preprocessor_config.json").is_file() or (config_json or {}).get("pretrained_cfg")
    preprocessor = ImageProcessor.from_pretrained(path, **(
        DINOV3_PREPROCESSING if config.model_type == "dinov3_convnext" and not has_own else {}))
    return ConvNeXt(config, params, backend=backend, preprocessor=preprocessor,
                    source=str(path), num_threads=num_threads, out_features=out_features)


def _is_backbone(config_json: dict) -> bool:
    """Whether ``config.json`` is that of a transformers Backbone class (``ConvNextBackbone``...)."""
    architectures = config_json.get("architectures") or ()
    return any(str(a).endswith("Backbone") for a in architectures)


def _check_against_config(config: ConvNextConfig, arch: dict, config_path, where: str) -> None:
    """The tensors must be what ``config.json`` describes (sizes, head, structure)."""
    found = {"model_type": "convnext", **arch, **arch["structure"]}
    # Kernel sizes are shapes: check_tensors names the tensor whose shape the config does not fit.
    for field in ("model_type", "depths", "hidden_sizes", "num_labels",
                  *(k for k in arch["structure"] if k != "kernel_sizes")):
        if getattr(config, field) != found[field]:
            raise WeightsError(f"{config_path}: {field} is {getattr(config, field)!r}, "
                               f"but the tensors in {where} have {found[field]!r}")
    if not config.final_norm and arch["structure"].get("final_norm", True):
        raise WeightsError(f"{config_path}: a ConvNextBackbone has no final LayerNorm, but "
                           f"{where} has one")


def _check_timm_structure(architecture: str, arch: dict, config_path, where: str) -> dict:
    """A timm directory's ``architecture`` must build what the tensors hold (:mod:`.family`).
    Returns what the name sets and no tensor shows (``norm_eps``, ``hidden_act``); {} for a name
    we do not know."""
    known = family.timm_structure(architecture)
    if known is None:
        return {}
    _, structure = known
    found = {**STRUCTURE_DEFAULTS, **arch["structure"]}
    differ = [f"{k} {structure[k]!r} (the tensors have {found[k]!r})" for k in
              ("stem_type", "norm_layer", "head_norm_first", "head_hidden_size", "kernel_sizes")
              if structure[k] != found[k]]
    if differ:
        raise WeightsError(f"{config_path}: architecture {architecture!r} has " + ", ".join(differ)
                           + f", which {where} does not match")
    size = family.timm_variant(architecture)
    depths, dims = size.depths, size.hidden_sizes
    if (tuple(arch["depths"]), tuple(arch["hidden_sizes"])) != (depths, dims):
        raise WeightsError(f"{config_path}: architecture {architecture!r} has depths {list(depths)} "
                           f"and widths {list(dims)}, but the tensors in {where} have "
                           f"{arch['depths']} and {arch['hidden_sizes']}")
    return {"norm_eps": size.norm_eps, "hidden_act": structure["hidden_act"]}


def save_pretrained(model: ConvNeXt, directory) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` in Hugging
    Face layout, each atomically. transformers' ``ConvNextForImageClassification`` and
    ``AutoImageProcessor`` load the result. A timm preprocessing that transformers cannot express
    (``squash`` below 384) writes no ``preprocessor_config.json``.
    """
    problem = weights.no_transformers_class(model.config)
    if problem:
        raise WeightsError(f"{model.source}: cannot write this model in transformers' layout: {problem}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model.config.model_type == "dinov3_convnext" or not model.config.final_norm:
        tensors, config = weights.to_transformers_family(model)
    else:
        tensors, config = weights.to_hf_tensors(model.params, model.config), model.config
    atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(directory / "config.json", config.to_json_file)
    if model.preprocessor is not None:
        try:
            processor = model.preprocessor.to_hf_dict()
        except ValueError:
            return
        atomic_write(directory / "preprocessor_config.json",
                     lambda p: Path(p).write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8"))


def from_pretrained(source, *, revision: str = "main", cache_dir=None, backend: str = "auto",
                    num_threads: int | None = None, out_features=None, out_indices=None) -> ConvNeXt:
    """Load a ConvNeXt from a local directory or weights file, or by name (README).

    A local path always wins and never touches the network. A name (hub id, timm name or alias
    from :mod:`convnext_np.checkpoints`) is resolved from the Hugging Face cache, else
    downloaded (:func:`convnext_np.hub.resolve`); ``revision`` and ``cache_dir`` apply to names.
    ``num_threads`` sets the threads of every forward pass (:mod:`convnext_np.threads`).
    ``out_features`` (stage names) or ``out_indices`` pick the maps of ``out.feature_maps``, as
    transformers' Backbone classes do (:mod:`convnext_np.backbone`).
    """
    if not os.fspath(source).strip():
        raise WeightsError("empty model name: give a hub id, a timm name, an alias, or a path "
                           "(\".\" for the current directory)")
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return load_local(path, backend=backend, num_threads=num_threads,
                          out_features=out_features, out_indices=out_indices)
    # Imported on first use: plain local loading needs no HTTP machinery (urllib.request,
    # http.client and ssl add some 24 ms to `import convnext_np`'s 180 ms, python -X importtime).
    from . import hub

    model = load_local(hub.resolve(str(source), revision=revision, cache_dir=cache_dir),
                       backend=backend, num_threads=num_threads, out_features=out_features,
                       out_indices=out_indices)
    model.source = str(source)
    return model
