"""timm's ConvNeXt architectures: each name's size and structural variant (``timm/models/convnext.py``).

A timm checkpoint directory names its ``architecture`` in ``config.json``; the loader checks the
tensors against what that name builds, and takes from the name what no tensor shows: the
activation (``hidden_act``) and the LayerNorm eps. The size (depths, widths, eps) is a row of
:data:`convnext_np.config.VARIANTS`, or of :data:`TEST_VARIANTS` for timm's unit-test models; the
structure fields are those of :class:`convnext_np.config.ConvNextConfig` (timm's own argument
names), unset ones at the paper's values. ``conv_mlp`` (1x1-conv storage of the MLP) changes no
computation, so it is not listed.
"""

from __future__ import annotations

from .config import STRUCTURE_DEFAULTS, VARIANTS, Variant

# The paper's ConvNeXt: the structure fields, and the activation (an exact GELU).
PAPER = {**STRUCTURE_DEFAULTS, "hidden_act": "gelu"}

# timm's unit-test models (``test_convnext``, ``test_convnext2``, ``test_convnext3``): norm_eps
# 1e-5 in every LayerNorm, head included. Sizes of their own, not variants one asks for by name.
TEST_VARIANTS = {
    "test": Variant((1, 2, 4, 2), (24, 32, 48, 64), 1e-5),
    "test2": Variant((1, 1, 1, 1), (32, 64, 96, 128), 1e-5),
}

_OLS_TIERED = {"stem_type": "overlap_tiered"}
_GELU_TANH = {"hidden_act": "gelu_pytorch_tanh"}  # timm act_layer='gelu_tanh'

# architecture -> (VARIANTS or TEST_VARIANTS row, fields that differ from the paper's ConvNeXt)
TIMM_ARCHITECTURES = {
    "convnext_zepto_rms": ("zepto", {"norm_layer": "simplenorm"}),
    "convnext_zepto_rms_ols": ("zepto", {"norm_layer": "simplenorm", "stem_type": "overlap_act"}),
    "convnext_atto": ("atto", {}),
    "convnext_atto_ols": ("atto", _OLS_TIERED),
    "convnext_femto": ("femto", {}),
    "convnext_femto_ols": ("femto", _OLS_TIERED),
    "convnext_pico": ("pico", {}),
    "convnext_pico_ols": ("pico", _OLS_TIERED),
    "convnext_nano": ("nano", {}),
    "convnext_nano_ols": ("nano", {"stem_type": "overlap"}),
    "convnext_tiny_hnf": ("tiny", {"head_norm_first": True}),
    "convnext_tiny": ("tiny", {}),
    "convnext_small": ("small", {}),
    "convnext_base": ("base", {}),
    "convnext_large": ("large", {}),
    "convnext_large_mlp": ("large", {"head_hidden_size": 1536}),
    "convnext_xlarge": ("xlarge", {}),
    "convnext_xxlarge": ("xxlarge", {}),
    "test_convnext": ("test", _GELU_TANH),
    "test_convnext2": ("test2", _GELU_TANH),
    "test_convnext3": ("test2", {"hidden_act": "silu", "kernel_sizes": [7, 5, 5, 3]}),
}


def timm_structure(architecture: str) -> tuple[str, dict] | None:
    """(variant, every structure field and hidden_act) of a timm architecture name, or None if unknown."""
    if architecture not in TIMM_ARCHITECTURES:
        return None
    variant, fields = TIMM_ARCHITECTURES[architecture]
    return variant, {**PAPER, **fields}


def timm_variant(architecture: str) -> Variant:
    """The size of a known timm architecture: its row of VARIANTS or TEST_VARIANTS."""
    name = TIMM_ARCHITECTURES[architecture][0]
    return TEST_VARIANTS[name] if name in TEST_VARIANTS else VARIANTS[name]


def describe(config) -> str:
    """One line naming what sets ``config`` apart from the paper's ConvNeXt; empty if nothing."""
    # ConvNeXt V1 and V2 are named by ``info``'s first line already.
    parts = [] if config.model_type in ("convnext", "convnextv2") else [f"model_type {config.model_type}"]
    parts += [f"{k} {getattr(config, k)}" for k, default in PAPER.items() if getattr(config, k) != default]
    return ", ".join(parts)
