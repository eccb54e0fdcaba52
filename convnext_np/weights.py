"""Official weight naming schemes, and the layout the model keeps its weights in.

Three schemes publish ConvNeXt weights: Hugging Face transformers
(``convnext.encoder.stages.0.layers.0.dwconv.weight``), timm (``stages.0.blocks.0.conv_dw.weight``)
and the original facebookresearch code (``stages.0.0.dwconv.weight``). Each is mapped by one
table of renames onto the Hugging Face V1 names, the canonical ones here. ConvNeXt V2 weights
use the same schemes, with a GRN in every block (transformers ``grn.weight``, timm
``mlp.grn.weight``, facebookresearch ConvNeXt-V2 ``grn.gamma``) and no layer scale;
transformers stores a V2 model under ``convnextv2.`` instead of ``convnext.``, which is mapped
in and out here (:func:`hf_prefix`). Then
:func:`to_params` checks the tensors strictly against the config and converts each, once, from
torch layout into the channels-last layout of :mod:`convnext_np.ops`.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from .config import STRUCTURE_DEFAULTS, VARIANTS, ConvNextConfig
from .errors import WeightsError

_STAGE = r"convnext.encoder.stages.\1"
_BLOCK = _STAGE + r".layers.\2"

# scheme -> [(pattern matched against the whole key, HF name)]
RENAMES = {
    "hf": [
        # ConvNeXt V2; ``gamma``/``beta`` are the GRN's legacy names, which transformers renames
        (r"(?:convnextv2\.)?(encoder\.stages\.\d+\.layers\.\d+\.grn)\.gamma", r"convnext.\1.weight"),
        (r"(?:convnextv2\.)?(encoder\.stages\.\d+\.layers\.\d+\.grn)\.beta", r"convnext.\1.bias"),
        (r"(?:convnext\.)?(embeddings|encoder|layernorm)(\..+)", r"convnext.\1\2"),
        (r"convnextv2\.(embeddings|encoder|layernorm)(\..+)", r"convnext.\1\2"),
        (r"(classifier\.(?:weight|bias))", r"\1"),
    ],
    "timm": [
        (r"stem\.0\.(weight|bias)", r"convnext.embeddings.patch_embeddings.\1"),
        (r"stem\.1\.(weight|bias)", r"convnext.embeddings.layernorm.\1"),
        (r"stages\.(\d+)\.downsample\.([01])\.(weight|bias)", _STAGE + r".downsampling_layer.\2.\3"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)", _BLOCK + r".dwconv.\3"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)", _BLOCK + r".layernorm.\3"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", _BLOCK + r".pwconv\3.\4"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", _BLOCK + r".layer_scale_parameter"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.(weight|bias)", _BLOCK + r".grn.\3"),  # V2
        (r"head\.norm\.(weight|bias)", r"convnext.layernorm.\1"),
        (r"head\.fc\.(weight|bias)", r"classifier.\1"),
    ],
    "fb": [
        (r"downsample_layers\.0\.0\.(weight|bias)", r"convnext.embeddings.patch_embeddings.\1"),
        (r"downsample_layers\.0\.1\.(weight|bias)", r"convnext.embeddings.layernorm.\1"),
        (r"downsample_layers\.([123])\.([01])\.(weight|bias)", _STAGE + r".downsampling_layer.\2.\3"),
        (r"stages\.(\d+)\.(\d+)\.dwconv\.(weight|bias)", _BLOCK + r".dwconv.\3"),
        (r"stages\.(\d+)\.(\d+)\.norm\.(weight|bias)", _BLOCK + r".layernorm.\3"),
        (r"stages\.(\d+)\.(\d+)\.pwconv([12])\.(weight|bias)", _BLOCK + r".pwconv\3.\4"),
        (r"stages\.(\d+)\.(\d+)\.gamma", _BLOCK + r".layer_scale_parameter"),
        (r"stages\.(\d+)\.(\d+)\.grn\.gamma", _BLOCK + r".grn.weight"),  # ConvNeXt-V2
        (r"stages\.(\d+)\.(\d+)\.grn\.beta", _BLOCK + r".grn.bias"),
        (r"norm\.(weight|bias)", r"convnext.layernorm.\1"),
        (r"head\.(weight|bias)", r"classifier.\1"),
    ],
}
# The wider family, as new rows. Names that no transformers class has are kept as timm
# spells them (``norm_pre``, ``head.pre_logits.fc``) or, for the first conv of timm's
# overlapping stem, ``convnext.embeddings.stem_conv1``.
RENAMES["hf"] += [  # ConvNextBackbone: one LayerNorm per returned map
    (r"(hidden_states_norms\.(?:stem|stage[1-4])\.(?:weight|bias))", r"\1"),
]
RENAMES["timm"] += [
    (r"norm_pre\.(weight|bias)", r"norm_pre.\1"),  # convnext_tiny_hnf
    (r"head\.pre_logits\.fc\.(weight|bias)", r"head.pre_logits.fc.\1"),  # convnext_large_mlp
]
_TIMM_BODY = RENAMES["timm"][2:]  # everything after the patchify stem's two rows
RENAMES["timm-overlap"] = [  # stem_type 'overlap' / 'overlap_tiered': conv, conv, norm
    (r"stem\.0\.(weight|bias)", r"convnext.embeddings.stem_conv1.\1"),
    (r"stem\.1\.(weight|bias)", r"convnext.embeddings.patch_embeddings.\1"),
    (r"stem\.2\.(weight|bias)", r"convnext.embeddings.layernorm.\1"),
] + _TIMM_BODY
RENAMES["timm-overlap-act"] = [  # stem_type 'overlap_act': conv, GELU (stem.1), conv, norm
    (r"stem\.0\.(weight|bias)", r"convnext.embeddings.stem_conv1.\1"),
    (r"stem\.2\.(weight|bias)", r"convnext.embeddings.patch_embeddings.\1"),
    (r"stem\.3\.(weight|bias)", r"convnext.embeddings.layernorm.\1"),
] + _TIMM_BODY
_DINO_STAGE = r"convnext.encoder.stages.\1"
_DINO_BLOCK = _DINO_STAGE + r".layers.\2"
# transformers' DINOv3ConvNextModel: the stem is stage 0's downsample_layers; transformers 5
# saves the stages under ``model.``, earlier files (and the hub's) have them bare.
RENAMES["dinov3"] = [
    (r"(?:model\.)?stages\.0\.downsample_layers\.0\.(weight|bias)", r"convnext.embeddings.patch_embeddings.\1"),
    (r"(?:model\.)?stages\.0\.downsample_layers\.1\.(weight|bias)", r"convnext.embeddings.layernorm.\1"),
    (r"(?:model\.)?stages\.([123])\.downsample_layers\.([01])\.(weight|bias)", _DINO_STAGE + r".downsampling_layer.\2.\3"),
    (r"(?:model\.)?stages\.(\d+)\.layers\.(\d+)\.depthwise_conv\.(weight|bias)", _DINO_BLOCK + r".dwconv.\3"),
    (r"(?:model\.)?stages\.(\d+)\.layers\.(\d+)\.layer_norm\.(weight|bias)", _DINO_BLOCK + r".layernorm.\3"),
    (r"(?:model\.)?stages\.(\d+)\.layers\.(\d+)\.pointwise_conv([12])\.(weight|bias)", _DINO_BLOCK + r".pwconv\3.\4"),
    (r"(?:model\.)?stages\.(\d+)\.layers\.(\d+)\.gamma", _DINO_BLOCK + r".layer_scale_parameter"),
    (r"layer_norm\.(weight|bias)", r"convnext.layernorm.\1"),
]
# Tensors that the reference converters discard: the original DINOv3 ConvNeXt checkpoint (in
# facebookresearch naming) carries ``norms.3``, which transformers' converter skips and timm's
# checkpoint_filter_fn drops with every other ``norms.*``.
DROPPED = {"fb": (r"norms\.3\.(weight|bias)",)}

# A key that only one scheme has: how the scheme of a state dict is recognised.
SIGNATURES = {
    "hf": ("convnext.embeddings.patch_embeddings.weight", "embeddings.patch_embeddings.weight",
           "convnextv2.embeddings.patch_embeddings.weight"),
    "timm": ("stem.0.weight",),
    "fb": ("downsample_layers.0.0.weight",),
    "dinov3": ("stages.0.downsample_layers.0.weight", "model.stages.0.downsample_layers.0.weight"),
}
# timm's overlapping stems: a timm state dict whose stem has a third (fourth) tensor group.
TIMM_STEMS = (("stem.3.weight", "timm-overlap-act"), ("stem.2.weight", "timm-overlap"))
# Wrappers around a state dict in training checkpoints, in the order timm's loader prefers
# them (EMA weights first, as the published "_ema" files hold).
WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
MAX_WRAPPER_DEPTH = 8


def unwrap(obj, where: str) -> dict:
    """The state dict inside a checkpoint: ``{"model": sd}`` and friends; ``module.`` stripped.

    At most :data:`MAX_WRAPPER_DEPTH` wrappers deep, and a checkpoint that contains itself is
    refused. What a wrapper held besides the weights (``optimizer``, ``epoch``, ``args`` ...)
    is ignored, and said so on the ``convnext_np`` logger.
    """
    seen = set()
    while isinstance(obj, dict) and not any(k in obj for ks in SIGNATURES.values() for k in ks):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        if id(obj) in seen:
            raise WeightsError(f"{where}: the checkpoint contains itself ({key!r} leads back to "
                               "a wrapper around it); expected a state dict inside")
        if len(seen) == MAX_WRAPPER_DEPTH:
            raise WeightsError(f"{where}: wrappers nested more than {MAX_WRAPPER_DEPTH} deep; "
                               "expected a state dict inside at most a few")
        seen.add(id(obj))
        ignored = sorted(str(k) for k in obj if k != key)
        if ignored:
            logging.getLogger("convnext_np").info("%s: loading the weights in %r; ignoring %s",
                                                  where, key, ", ".join(ignored))
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{where}: expected a state dict (names to tensors), got {type(obj).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_scheme(keys, where: str) -> str:
    keys = set(keys)
    prefixes = sorted({k.split(".", 1)[0] for k in keys} & {"convnext", "convnextv2"})
    if len(prefixes) > 1:
        raise WeightsError(f"{where}: tensors under both 'convnext.' and 'convnextv2.': "
                           "one checkpoint is one model")
    if prefixes == ["convnextv2"] and not any(".grn." in k for k in keys):
        raise WeightsError(f"{where}: tensors under 'convnextv2.' (transformers' ConvNeXt V2) but "
                           "no GRN tensors, which every ConvNeXt V2 block has")
    for scheme, signature in SIGNATURES.items():
        if keys & set(signature):
            if scheme == "timm":
                scheme = next((name for key, name in TIMM_STEMS if key in keys), scheme)
            return scheme
    sample = ", ".join(sorted(keys)[:5]) or "no tensors at all"
    raise WeightsError(f"{where}: not a ConvNeXt checkpoint in any known naming "
                       f"(HF, timm, facebookresearch): no stem conv found; keys start {sample}")


def to_hf_names(state_dict: dict, scheme: str, where: str) -> dict:
    """Rename every key of ``scheme`` to its HF name; timm's 1x1-conv MLP weights -> Linear."""
    out = {}
    for key, value in state_dict.items():
        if any(re.fullmatch(pattern, key) for pattern in DROPPED.get(scheme, ())):
            continue
        for pattern, repl in RENAMES[scheme]:
            m = re.fullmatch(pattern, key)
            if m:
                name = m.expand(repl)
                break
        else:
            raise WeightsError(f"{where}: unexpected tensor {key!r} for a {scheme} ConvNeXt checkpoint")
        if name in out:
            raise WeightsError(f"{where}: two tensors are {name!r} (the second is {key!r})")
        if re.search(r"pwconv[12]\.weight$", name) and np.ndim(value) == 4 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[:2])  # timm's conv_mlp: 1x1 convs
        if re.search(r"\.grn\.(weight|bias)$", name) and np.ndim(value) == 1:
            value = value.reshape(1, 1, 1, -1)  # timm's GRN: (4C,); transformers': (1, 1, 1, 4C)
        out[name] = value
    return out


# Our parameter names (those of the functions in :mod:`convnext_np.model`) -> HF names.
STEM_NAMES = {"w": "patch_embeddings.weight", "b": "patch_embeddings.bias",
              "norm_w": "layernorm.weight", "norm_b": "layernorm.bias"}
DOWNSAMPLE_NAMES = {"norm_w": "0.weight", "norm_b": "0.bias", "w": "1.weight", "b": "1.bias"}
BLOCK_NAMES = {"dwconv_w": "dwconv.weight", "dwconv_b": "dwconv.bias",
               "norm_w": "layernorm.weight", "norm_b": "layernorm.bias",
               "pwconv1_w": "pwconv1.weight", "pwconv1_b": "pwconv1.bias",
               "pwconv2_w": "pwconv2.weight", "pwconv2_b": "pwconv2.bias",
               "gamma": "layer_scale_parameter", "grn_w": "grn.weight", "grn_b": "grn.bias"}
V2_ONLY, V1_ONLY = ("grn_w", "grn_b"), ("gamma",)  # ConvNeXt V2: GRN, no layer scale

HEAD_NAMES = {"norm_w": "convnext.layernorm.weight", "norm_b": "convnext.layernorm.bias",
              "fc_w": "classifier.weight", "fc_b": "classifier.bias"}


def param_table(config: ConvNextConfig) -> list:
    """(path in the parameter tree, HF name, torch-layout shape) of every tensor."""
    dims = config.hidden_sizes
    c0, c3 = dims[0], dims[-1]
    stem_shapes = {"w": (c0, config.num_channels, 4, 4), "b": (c0,), "norm_w": (c0,), "norm_b": (c0,)}
    rows = [(("stem", k), f"convnext.embeddings.{v}", stem_shapes[k]) for k, v in STEM_NAMES.items()]
    for s, (depth, c, k) in enumerate(zip(config.depths, dims, config.kernel_sizes)):
        stage = f"convnext.encoder.stages.{s}"
        if s > 0:
            shapes = {"norm_w": (dims[s - 1],), "norm_b": (dims[s - 1],),
                      "w": (c, dims[s - 1], 2, 2), "b": (c,)}
            rows += [(("stages", s, "downsample", k), f"{stage}.downsampling_layer.{v}", shapes[k])
                     for k, v in DOWNSAMPLE_NAMES.items()]
        shapes = {"dwconv_w": (c, 1, k, k), "pwconv1_w": (4 * c, c), "pwconv1_b": (4 * c,),
                  "pwconv2_w": (c, 4 * c), "grn_w": (1, 1, 1, 4 * c), "grn_b": (1, 1, 1, 4 * c)}
        absent = V1_ONLY if config.model_type == "convnextv2" else V2_ONLY
        rows += [(("stages", s, "blocks", b, k), f"{stage}.layers.{b}.{v}", shapes.get(k, (c,)))
                 for b in range(depth) for k, v in BLOCK_NAMES.items() if k not in absent]
    head_shapes = {"norm_w": (c3,), "norm_b": (c3,),
                   "fc_w": (config.num_labels, c3), "fc_b": (config.num_labels,)}
    rows += [(("head", k), v, head_shapes[k]) for k, v in HEAD_NAMES.items()
             if config.num_labels or not k.startswith("fc")]
    return _variant_rows(config, rows)


def make_divisible(v, divisor=8):
    """timm's ``make_divisible`` (round to a multiple of 8, never below 90% of ``v``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def stem_width(config: ConvNextConfig) -> int:
    """Output channels of the first conv of timm's overlapping stem (half of C0 when tiered)."""
    c0 = config.hidden_sizes[0]
    return make_divisible(c0 // 2) if config.stem_type == "overlap_tiered" else c0


def _variant_rows(config: ConvNextConfig, rows: list) -> list:
    """The rows of :func:`param_table` for timm's structural variants (``timm/models/convnext.py``)."""
    c0, c3, k = config.hidden_sizes[0], config.hidden_sizes[-1], config.num_labels
    if config.stem_type != "patch":  # two 3x3 convs replace the 4x4 patchify
        mid = stem_width(config)
        rows = [(("stem", "conv1_w"), "convnext.embeddings.stem_conv1.weight", (mid, config.num_channels, 3, 3)),
                (("stem", "conv1_b"), "convnext.embeddings.stem_conv1.bias", (mid,))] + \
               [(path, name, (c0, mid, 3, 3) if path == ("stem", "w") else shape) for path, name, shape in rows]
    if config.head_norm_first:  # the same norm, over the map, is timm's norm_pre
        rows = [(path, name.replace("convnext.layernorm.", "norm_pre."), shape) for path, name, shape in rows]
    if config.head_hidden_size:
        hh = config.head_hidden_size
        rows = [(path, name, (k, hh) if path == ("head", "fc_w") else shape) for path, name, shape in rows]
        rows += [(("head", "pre_w"), "head.pre_logits.fc.weight", (hh, c3)),
                 (("head", "pre_b"), "head.pre_logits.fc.bias", (hh,))]
    if not config.final_norm:  # transformers' ConvNextBackbone: no final norm, no head
        rows = [row for row in rows if row[0][0] != "head"]
    if config.norm_layer == "simplenorm":  # no bias in any norm
        rows = [row for row in rows if row[0][-1] != "norm_b"]
    return rows


def expected_shapes(config: ConvNextConfig) -> dict:
    """Every HF tensor name of ``config``, with its torch-layout shape."""
    return {name: shape for _, name, shape in param_table(config)}


def infer_architecture(hf: dict, where: str) -> dict:
    """depths, hidden_sizes and num_labels read off the shapes of HF-named tensors."""
    try:
        dims, depths = [], []
        for s in range(4):
            blocks = {int(m.group(1)) for k in hf
                      if (m := re.fullmatch(rf"convnext\.encoder\.stages\.{s}\.layers\.(\d+)\.dwconv\.weight", k))}
            depths.append(len(blocks))
            dims.append(hf[f"convnext.encoder.stages.{s}.layers.0.dwconv.weight"].shape[0])
    except KeyError as e:
        raise WeightsError(f"{where}: cannot infer the architecture: tensor {e.args[0]!r} is missing") from None
    head = hf.get("classifier.weight")
    return {"depths": depths, "hidden_sizes": dims, "num_labels": 0 if head is None else head.shape[0],
            "model_type": "convnextv2" if any(".grn." in k for k in hf) else "convnext"}


def add_fcmae_norm(hf: dict, arch: dict) -> dict:
    """``hf`` with a final LayerNorm of weight 1 and bias 0 where a headless ConvNeXt V2 has none.

    The self-supervised FCMAE encoders (timm ``convnextv2_*.fcmae``) have no head and no final
    norm; timm loads them into a model whose norm keeps its initial values (timm convnext.py,
    ``_create_convnext``), which this reproduces. Any other checkpoint must have its norm.
    """
    names = ("convnext.layernorm.weight", "convnext.layernorm.bias")
    if arch["model_type"] != "convnextv2" or arch["num_labels"] or any(n in hf for n in names):
        return hf
    c3 = arch["hidden_sizes"][-1]
    return {**hf, names[0]: np.ones(c3, np.float32), names[1]: np.zeros(c3, np.float32)}


def hf_prefix(config: ConvNextConfig) -> str:
    """The prefix of transformers' base model: ``convnext`` (V1) or ``convnextv2`` (V2)."""
    return config.model_type


def infer_structure(hf: dict, scheme: str) -> dict:
    """The config fields of timm's structural variants and of Backbones (no final norm), read off
    HF-named tensors (see :class:`ConvNextConfig`); empty for the paper's ConvNeXt.

    The activation (``hidden_act``) is not among them: no tensor shows it. timm's GELU-tanh and
    SiLU models (``test_convnext*``) are known by the ``architecture`` of their directory's
    ``config.json`` (:mod:`convnext_np.family`)."""
    s = {}
    if "convnext.embeddings.stem_conv1.weight" in hf:
        c0, mid = hf["convnext.embeddings.patch_embeddings.weight"].shape[:2]
        s["stem_type"] = "overlap_act" if scheme == "timm-overlap-act" else \
            "overlap" if mid == c0 else "overlap_tiered"
    if "convnext.embeddings.layernorm.weight" in hf and "convnext.embeddings.layernorm.bias" not in hf:
        s["norm_layer"] = "simplenorm"  # timm's convnext_zepto_rms: norms without bias
    if "norm_pre.weight" in hf:
        s["head_norm_first"] = True
    if "head.pre_logits.fc.weight" in hf:
        s["head_hidden_size"] = int(hf["head.pre_logits.fc.weight"].shape[0])
    if not any(k.startswith(("convnext.layernorm.", "norm_pre.", "classifier.", "head.")) for k in hf):
        s["final_norm"] = False  # a Backbone: neither a final norm nor a head (any part of one)
    dwconvs = [hf[f"convnext.encoder.stages.{i}.layers.0.dwconv.weight"] for i in range(4)]
    paper = STRUCTURE_DEFAULTS["kernel_sizes"]
    # A dwconv weight of another rank is check_tensors' to report; until then, the paper's size.
    kernel_sizes = [int(w.shape[-1]) if np.ndim(w) == 4 else k for w, k in zip(dwconvs, paper)]
    if kernel_sizes != paper:  # timm's kernel_sizes (test_convnext3: 7, 5, 5, 3)
        s["kernel_sizes"] = kernel_sizes
    return s


def pop_backbone_norms(hf: dict, hidden_sizes, where: str) -> dict:
    """Take transformers' ConvNextBackbone norms (``hidden_states_norms.<stage>``) out of ``hf``:
    stage name -> {"w", "b"}, in stage order, each checked against the stage's width."""
    widths = dict(zip(("stem", "stage1", "stage2", "stage3", "stage4"), [hidden_sizes[0], *hidden_sizes]))
    norms = {}
    for stage, c in widths.items():
        names = [f"hidden_states_norms.{stage}.{p}" for p in ("weight", "bias")]
        found = [hf.pop(n) for n in names if n in hf]
        if not found:
            continue
        if len(found) != 2:
            raise WeightsError(f"{where}: hidden_states_norms.{stage} needs both weight and bias")
        for name, value in zip(names, found):
            if tuple(value.shape) != (c,):
                raise WeightsError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, "
                                   f"stage {stage!r} has {c} channels")
        norms[stage] = {"w": torch_to_ours(names[0], found[0]), "b": torch_to_ours(names[1], found[1])}
    return norms


def default_norm_eps(hidden_sizes) -> float:
    """1e-6, except for timm's xxlarge (1e-5, timm's ``norm_eps``)."""
    for v in VARIANTS.values():
        if tuple(hidden_sizes) == v.hidden_sizes:
            return v.norm_eps
    return 1e-6


# Torch layout -> the layout of :mod:`convnext_np.ops`, and back, by the end of the HF name.
def _patch_in(w):  # (Co, Ci, k, k) -> (k*k*Ci, Co), rows ordered (kh, kw, ci)
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _patch_out(w, shape):
    co, ci, k, _ = shape
    return w.reshape(k, k, ci, co).transpose(3, 2, 0, 1)


LAYOUTS = [  # (name pattern, torch -> ours, ours -> torch)
    (r"(patch_embeddings|downsampling_layer\.1)\.weight", _patch_in, _patch_out),
    (r"stem_conv1\.weight", _patch_in, _patch_out),  # timm's overlapping stem: 3x3 kernels
    (r"pre_logits\.fc\.weight", lambda w: w.T, lambda w, s: w.T),  # timm convnext_large_mlp
    (r"dwconv\.weight", lambda w: w[:, 0].transpose(1, 2, 0), lambda w, s: w.transpose(2, 0, 1)[:, None]),
    (r"(pwconv[12]|classifier)\.weight", lambda w: w.T, lambda w, s: w.T),
    (r"grn\.(weight|bias)", lambda w: w.reshape(-1), lambda w, s: w.reshape(s)),  # (1, 1, 1, 4C) <-> (4C,)
]


def _layout(name):
    for pattern, to_ours, to_torch in LAYOUTS:
        if re.search(pattern + "$", name):
            return to_ours, to_torch
    return (lambda w: w), (lambda w, shape: w)


def torch_to_ours(name: str, w) -> np.ndarray:
    """The tensor HF-named ``name`` in the layout of :mod:`convnext_np.ops`, contiguous float32, in
    memory of its own: never a view of the (memory-mapped) file, which would keep the file's
    pages resident for as long as the model lives."""
    out = np.ascontiguousarray(_layout(name)[0](np.asarray(w)), dtype=np.float32)
    return out if out.base is None else out.copy()


def ours_to_torch(name: str, w, shape) -> np.ndarray:
    """The inverse of :func:`torch_to_ours`; ``shape`` is the torch-layout shape."""
    return np.ascontiguousarray(_layout(name)[1](w, shape), dtype=np.float32)


def check_tensors(hf: dict, config: ConvNextConfig, where: str) -> None:
    """Strict: every expected tensor present, none unexpected, each of the right shape and a float."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in hf]
    unexpected = [k for k in hf if k not in expected]
    if missing or unexpected:
        def some(kind, names):
            listed = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            return f"{kind} {len(names)} tensor{'s' if len(names) > 1 else ''}: {listed}"
        parts = [some(kind, names) for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise WeightsError(f"{where}: weights do not match the config (depths {config.depths}, "
                           f"hidden_sizes {config.hidden_sizes}, {config.num_labels} labels): "
                           + "; ".join(parts))
    for name, shape in expected.items():
        value = hf[name]
        if tuple(value.shape) != shape:
            raise WeightsError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, "
                               f"the config needs {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{where}: tensor {name!r} has dtype {value.dtype}, not floating point")


def empty_tree(config: ConvNextConfig) -> dict:
    """The parameter tree's skeleton: stem, 4 stages (downsample None in stage 0), head.

    With bias-free norms (timm's SimpleNorm) every ``norm_b`` is None."""
    tree = {"stem": {}, "head": {},
            "stages": [{"downsample": None if s == 0 else {}, "blocks": [{} for _ in range(d)]}
                       for s, d in enumerate(config.depths)]}
    if config.norm_layer == "simplenorm":
        layers = [tree["stem"], *([tree["head"]] if config.final_norm else []),
                  *(stage[part] for stage in tree["stages"][1:] for part in ["downsample"]),
                  *(block for stage in tree["stages"] for block in stage["blocks"])]
        for layer in layers:
            layer["norm_b"] = None
    return tree


def _node(tree, path):
    for step in path[:-1]:
        tree = tree[step]
    return tree


def read_only(tree):
    """Mark every array of the parameter tree read-only (in place) and return the tree.

    A loaded model's weights are constants: writing to one raises instead of changing the model
    silently, and the Numba backend may keep a derived copy of each (kernels.pack). Numba compiles
    its kernels for read-only arrays apart from writable ones, so the warm-up's models are marked
    the same way.
    """
    if isinstance(tree, (dict, list)):
        for value in tree.values() if isinstance(tree, dict) else tree:
            read_only(value)
    array = tree
    while isinstance(array, np.ndarray):  # the array, and the arrays it views (a reshaped copy, say)
        array.flags.writeable = False
        array = array.base
    return tree


def to_params(hf: dict, config: ConvNextConfig, where: str) -> dict:
    """Check HF-named torch-layout tensors against ``config``; return the model's parameter tree.

    Each tensor is converted once into a new contiguous float32 array; nothing keeps a
    reference to the (possibly memory-mapped) input.
    """
    check_tensors(hf, config, where)
    tree = empty_tree(config)
    for path, name, _ in param_table(config):
        _node(tree, path)[path[-1]] = torch_to_ours(name, hf[name])
    return tree


def to_hf_tensors(params: dict, config: ConvNextConfig) -> dict:
    """The inverse of :func:`to_params`: HF names (``convnextv2.`` for V2), torch layout,
    contiguous float32."""
    prefix = hf_prefix(config) + "."
    return {prefix + name.removeprefix("convnext.") if name.startswith("convnext.") else name:
            ours_to_torch(name, _node(params, path)[path[-1]], shape)
            for path, name, shape in param_table(config)}


def no_transformers_class(config: ConvNextConfig) -> str | None:
    """Why no transformers class holds ``config``'s model (timm's structural variants), or None."""
    odd = [f"{k}={getattr(config, k)!r}" for k in ("stem_type", "norm_layer", "head_norm_first",
                                                   "head_hidden_size", "kernel_sizes")
           if getattr(config, k) != STRUCTURE_DEFAULTS[k]]
    return f"timm's {', '.join(odd)} has no transformers equivalent" if odd else None


# Our canonical names -> transformers' DINOv3ConvNextModel names (the inverse of RENAMES["dinov3"]).
DINOV3_EXPORT = [
    (r"convnext\.embeddings\.patch_embeddings\.(.+)", r"stages.0.downsample_layers.0.\1"),
    (r"convnext\.embeddings\.layernorm\.(.+)", r"stages.0.downsample_layers.1.\1"),
    (r"convnext\.encoder\.stages\.(\d)\.downsampling_layer\.(\d)\.(.+)", r"stages.\1.downsample_layers.\2.\3"),
    (r"convnext\.encoder\.(stages\.\d+\.layers\.\d+)\.dwconv\.(.+)", r"\1.depthwise_conv.\2"),
    (r"convnext\.encoder\.(stages\.\d+\.layers\.\d+)\.layernorm\.(.+)", r"\1.layer_norm.\2"),
    (r"convnext\.encoder\.(stages\.\d+\.layers\.\d+)\.pwconv([12])\.(.+)", r"\1.pointwise_conv\2.\3"),
    (r"convnext\.encoder\.(stages\.\d+\.layers\.\d+)\.layer_scale_parameter", r"\1.gamma"),
    (r"convnext\.layernorm\.(.+)", r"layer_norm.\1"),
]


def to_transformers_family(model) -> tuple:
    """(tensors, config) of a DINOv3 ConvNeXt or a Backbone in the layout of its transformers class:
    ``DINOv3ConvNextModel`` / ``DINOv3ConvNextBackbone`` names, or ``ConvNextBackbone``'s (and
    ``ConvNextV2Backbone``'s: no base-model prefix, plus ``hidden_states_norms.<stage>``), with
    ``out_features`` in the config. Torch layout, contiguous float32."""
    import dataclasses

    config = model.config
    tensors = {name: ours_to_torch(name, _node(model.params, path)[path[-1]], shape)
               for path, name, shape in param_table(config)}
    if config.model_type == "dinov3_convnext":
        out = {}
        for name, value in tensors.items():
            for pattern, repl in DINOV3_EXPORT:
                if re.fullmatch(pattern, name):
                    out[re.sub(pattern, repl, name)] = value
                    break
        architecture = "DINOv3ConvNextModel" if config.final_norm else "DINOv3ConvNextBackbone"
    else:
        out = {name.removeprefix("convnext."): value for name, value in tensors.items()}
        for stage, norm in (model.params.get("backbone_norms") or {}).items():
            out[f"hidden_states_norms.{stage}.weight"] = np.ascontiguousarray(norm["w"], np.float32)
            out[f"hidden_states_norms.{stage}.bias"] = np.ascontiguousarray(norm["b"], np.float32)
        architecture = {"convnextv2": "ConvNextV2Backbone"}.get(config.model_type, "ConvNextBackbone")
    extra = dict(config.extra, architectures=[architecture])
    if not config.final_norm and model.out_features:
        extra["out_features"] = list(model.out_features)
        extra.pop("out_indices", None)
    return out, dataclasses.replace(config, extra=extra)
