"""Model configuration, with Hugging Face ``config.json`` field names, and the variant table.

The fields are those of transformers' ``ConvNextConfig``; a ``config.json`` read from disk keeps
every key it had (unknown ones in :attr:`ConvNextConfig.extra`) so that writing it back loses
nothing. One field is ours: ``norm_eps``, the eps of every LayerNorm except the final one, which
the paper's code fixes at 1e-6 and timm's ``convnext_xxlarge`` sets to 1e-5 (timm ``convnext.py``, ``norm_eps``).
``hidden_act`` is transformers' field: ``"gelu"`` (the paper's), ``"gelu_pytorch_tanh"`` (timm's
``"gelu_tanh"`` is taken as the same) or ``"silu"`` (:data:`HIDDEN_ACTS`).

``model_type`` names the family member as transformers does (``"convnext"``,
``"dinov3_convnext"``). A few more fields describe timm's structural variants, with timm's own
argument names (``timm/models/convnext.py``); each is written to ``config.json`` only when it
differs from the paper's ConvNeXt, which transformers' ``ConvNextConfig`` is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import WeightsError
from .guards import check_num_labels, read_json_file

class Variant(NamedTuple):
    """One size of ConvNeXt: blocks and width per stage, and the eps of every LayerNorm (timm's
    ``norm_eps``)."""

    depths: tuple
    hidden_sizes: tuple
    norm_eps: float


# Paper Table 9 and timm's convnext.py (zepto .. nano are timm's own).
VARIANTS = {
    "zepto": Variant((2, 2, 4, 2), (32, 64, 128, 256), 1e-6),
    "atto": Variant((2, 2, 6, 2), (40, 80, 160, 320), 1e-6),
    "femto": Variant((2, 2, 6, 2), (48, 96, 192, 384), 1e-6),
    "pico": Variant((2, 2, 6, 2), (64, 128, 256, 512), 1e-6),
    "nano": Variant((2, 2, 8, 2), (80, 160, 320, 640), 1e-6),
    "tiny": Variant((3, 3, 9, 3), (96, 192, 384, 768), 1e-6),
    "small": Variant((3, 3, 27, 3), (96, 192, 384, 768), 1e-6),
    "base": Variant((3, 3, 27, 3), (128, 256, 512, 1024), 1e-6),
    "large": Variant((3, 3, 27, 3), (192, 384, 768, 1536), 1e-6),
    "xlarge": Variant((3, 3, 27, 3), (256, 512, 1024, 2048), 1e-6),
    "xxlarge": Variant((3, 4, 30, 3), (384, 768, 1536, 3072), 1e-5),
}
# ConvNeXt V2 (Woo et al. 2023) comes in the same sizes (atto .. nano with timm's 1x1-conv MLP)
# and one more, huge.
V2_VARIANTS = {**VARIANTS, "huge": Variant((3, 3, 27, 3), (352, 704, 1408, 2816), 1e-6)}


# timm's ``stem_type``: the paper's 4x4 patchify, or two overlapping 3x3 convs of stride 2
# (``_ols`` models; ``overlap_tiered`` halves the first conv's width, ``overlap_act`` puts a GELU
# between the convs). timm's ``norm_layer``: LayerNorm, or SimpleNorm (``convnext_zepto_rms``).
STEM_TYPES = ("patch", "overlap", "overlap_tiered", "overlap_act")
NORM_LAYERS = ("layernorm", "simplenorm")
# transformers' names of the family members: ConvNeXt (V1), ConvNeXt V2 (GRN blocks), DINOv3 ConvNeXt.
MODEL_TYPES = ("convnext", "convnextv2", "dinov3_convnext")
# Our structure fields at the paper's values: to_dict leaves them out of config.json then.
STRUCTURE_DEFAULTS = {"stem_type": "patch", "norm_layer": "layernorm", "head_norm_first": False,
                      "head_hidden_size": None, "final_norm": True, "kernel_sizes": [7, 7, 7, 7]}
# hidden_act (the block's activation; transformers' ACT2FN names, and timm's act_layer name
# "gelu_tanh") -> its function in convnext_np.ops. The paper's is the exact GELU; timm's unit-test
# models (test_convnext*) use GELU's tanh approximation or SiLU. Names that no ConvNeXt port uses
# are refused, transformers' "gelu_new" (the same tanh formula, in other models' configs) too.
HIDDEN_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "silu": "silu"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def read_json_object(path) -> dict:
    """A JSON file that must hold an object (bounded depth, finite numbers:
    :func:`convnext_np.guards.load_json`); WeightsError naming the file otherwise."""
    d = read_json_file(path, "config")
    if not isinstance(d, dict):
        raise WeightsError(f"{path}: config must be a JSON object, got {type(d).__name__}")
    return d


# model_type -> the transformers class of a model (without, with) a classification head.
ARCHITECTURES = {"convnext": ("ConvNextForImageClassification", "ConvNextForImageClassification"),
                 "convnextv2": ("ConvNextV2Model", "ConvNextV2ForImageClassification"),
                 "dinov3_convnext": ("DINOv3ConvNextModel", "DINOv3ConvNextModel")}


@dataclass
class ConvNextConfig:
    """Architecture and labels of one ConvNeXt, as in a Hugging Face ``config.json``.

    ``layer_norm_eps`` is the eps of the final (pooled) LayerNorm only: transformers' default and
    the hub configs carry 1e-12, timm and the paper's code use 1e-6 (transformers ``configuration_convnext.py``).
    """

    num_channels: int = 3
    patch_size: int = 4
    num_stages: int = 4
    hidden_sizes: list = field(default_factory=lambda: [96, 192, 384, 768])
    depths: list = field(default_factory=lambda: [3, 3, 9, 3])
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    image_size: int = 224
    norm_eps: float = 1e-6
    model_type: str = "convnext"
    stem_type: str = "patch"
    norm_layer: str = "layernorm"
    head_norm_first: bool = False  # timm ``_hnf``: norm over the map, then pool, then fc
    head_hidden_size: int | None = None  # timm ``convnext_large_mlp``: pool, norm, fc, GELU, fc
    final_norm: bool = True  # False for transformers' ConvNextBackbone (no pooled output)
    kernel_sizes: list = field(default_factory=lambda: list(STRUCTURE_DEFAULTS["kernel_sizes"]))  # timm: per stage
    id2label: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if _is_int(self.kernel_sizes):  # timm's kernel_sizes: one int for every stage, or one per stage
            self.kernel_sizes = [self.kernel_sizes] * 4
        for name in ("depths", "hidden_sizes", "kernel_sizes"):
            value = getattr(self, name)
            if not (isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)):
                raise WeightsError(f"invalid ConvNeXt config: {name} must be a list of ints, got {value!r}")
            setattr(self, name, [int(v) for v in value])
        for name in ("num_channels", "patch_size", "num_stages", "image_size"):
            if not _is_int(getattr(self, name)):
                raise WeightsError(f"invalid ConvNeXt config: {name} must be an int, got {getattr(self, name)!r}")
        for name in ("norm_eps", "layer_norm_eps"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 < value < 1):
                raise WeightsError(f"invalid ConvNeXt config: {name} must be a number in (0, 1), got {value!r}")
        if not isinstance(self.id2label, dict) or not isinstance(self.extra, dict):
            raise WeightsError("invalid ConvNeXt config: id2label must be a JSON object")
        check_num_labels(len(self.id2label), "invalid ConvNeXt config: id2label")
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    @property
    def num_labels(self) -> int:
        """Number of classes; 0 for a model without a classification head."""
        return len(self.id2label)

    @property
    def label2id(self) -> dict:
        return {label: i for i, label in self.id2label.items()}

    @classmethod
    def from_variant(cls, name: str, num_labels: int = 1000, **overrides) -> "ConvNextConfig":
        """Config of a named variant (``"tiny"``, ``"atto"``, ...) with generic labels."""
        table = V2_VARIANTS if overrides.get("model_type") == "convnextv2" else VARIANTS
        if name not in table:
            raise ValueError(f"unknown ConvNeXt variant {name!r}; known: {', '.join(table)}")
        v = table[name]
        overrides.setdefault("id2label", {i: f"LABEL_{i}" for i in range(num_labels)})
        return cls(depths=list(v.depths), hidden_sizes=list(v.hidden_sizes), norm_eps=v.norm_eps, **overrides)

    def validate(self) -> None:
        """Raise :class:`WeightsError` for a config no ConvNeXt can have."""
        problems = []
        if self.num_stages != 4 or len(self.depths) != 4 or len(self.hidden_sizes) != 4:
            problems.append(f"needs 4 stages, got num_stages={self.num_stages}, "
                            f"depths={self.depths}, hidden_sizes={self.hidden_sizes}")
        if any(d < 1 for d in self.depths) or any(c < 1 for c in self.hidden_sizes):
            problems.append(f"depths and hidden_sizes must be positive: {self.depths}, {self.hidden_sizes}")
        if self.patch_size != 4 or self.num_channels != 3:
            problems.append(f"only patch_size=4 and num_channels=3 are ConvNeXt, got "
                            f"{self.patch_size} and {self.num_channels}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in HIDDEN_ACTS:
            problems.append(f"hidden_act must be one of {', '.join(map(repr, HIDDEN_ACTS))} (exact erf "
                            f"GELU, its tanh approximation, SiLU), got {self.hidden_act!r}")
        if len(self.kernel_sizes) != 4 or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            problems.append(f"kernel_sizes must be one odd positive int, or 4 (one per stage), "
                            f"got {self.kernel_sizes}")
        for name, allowed in (("model_type", MODEL_TYPES), ("stem_type", STEM_TYPES),
                              ("norm_layer", NORM_LAYERS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.head_norm_first, bool) or not isinstance(self.final_norm, bool):
            problems.append("head_norm_first and final_norm must be true or false")
        if self.head_hidden_size is not None and not (_is_int(self.head_hidden_size) and self.head_hidden_size > 0):
            problems.append(f"head_hidden_size must be a positive int or null, got {self.head_hidden_size!r}")
        if self.head_norm_first and self.head_hidden_size:
            problems.append("head_norm_first and head_hidden_size do not go together (timm asserts so)")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            problems.append("id2label keys must be 0..num_labels-1")
        if problems:
            raise WeightsError("invalid ConvNeXt config: " + "; ".join(problems))

    def variant(self) -> str | None:
        """The variant name whose depths and widths this config has, if any."""
        table = V2_VARIANTS if self.model_type == "convnextv2" else VARIANTS
        for name, v in table.items():
            if (tuple(self.depths), tuple(self.hidden_sizes)) == (v.depths, v.hidden_sizes):
                return name
        return None

    # --- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, where=None) -> "ConvNextConfig":
        """From a ``config.json`` as a dict; errors are prefixed with ``where`` (its path)."""
        prefix = f"{where}: " if where is not None else ""
        try:
            return cls._from_dict(dict(d))
        except WeightsError as e:
            raise WeightsError(f"{prefix}{e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{prefix}invalid ConvNeXt config: {e}") from None

    @classmethod
    def _from_dict(cls, d: dict) -> "ConvNextConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "id2label"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        id2label = d.pop("id2label", None)
        d.pop("label2id", None)  # derived from id2label
        if id2label is None:
            # transformers falls back to num_labels generic labels (default 2).
            n = check_num_labels(d.pop("num_labels", 2), "invalid ConvNeXt config: num_labels")
            id2label = {i: f"LABEL_{i}" for i in range(n)}
        else:
            d.pop("num_labels", None)
            # transformers' 22k conversion deleted keys 9205 and 15027 of a 21843-class list
            # without re-indexing (``convert_convnext_to_pytorch.py``): the labels, in key order, are the logits in order.
            id2label = dict(enumerate(v for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))))
        return cls(id2label=id2label, extra=d, **kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ConvNextConfig":
        return cls.from_dict(read_json_object(path), where=path)

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("extra", "id2label")})
        d["id2label"] = {str(i): label for i, label in self.id2label.items()}
        d["label2id"] = self.label2id
        for name, default in STRUCTURE_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        if self.model_type == "dinov3_convnext":  # fixed in DINOv3ConvNextConfig (num_stages: read-only)
            del d["num_stages"], d["patch_size"]
        if self.model_type == "convnextv2":  # transformers' ConvNextV2Config has no layer scale
            del d["layer_scale_init_value"]
        d.setdefault("architectures", [ARCHITECTURES[self.model_type][bool(self.num_labels)]])
        return dict(sorted(d.items()))

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
