"""timm's ConvNeXt architectures: each name's size and structural variant (``timm/models/convnext.py``).

A timm checkpoint directory names its ``architecture`` in ``config.json``; the loader checks the
tensors against what that name builds. The variant (depths, widths) is a row of
:data:`convnext_np.config.VARIANTS`; the structure fields are those of
:class:`convnext_np.config.ConvNextConfig` (timm's own argument names), unset ones at the paper's
values. ``conv_mlp`` (1x1-conv storage of the MLP) changes no computation, so it is not listed.
"""

from __future__ import annotations

from .config import STRUCTURE_DEFAULTS

_OLS_TIERED = {"stem_type": "overlap_tiered"}

# architecture -> (VARIANTS row, structure fields that differ from the paper's ConvNeXt)
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
}


def timm_structure(architecture: str) -> tuple[str, dict] | None:
    """(variant, every structure field) of a timm architecture name, or None if unknown."""
    if architecture not in TIMM_ARCHITECTURES:
        return None
    variant, fields = TIMM_ARCHITECTURES[architecture]
    return variant, {**STRUCTURE_DEFAULTS, "final_norm": True, **fields}


def describe(config) -> str:
    """One line naming what sets ``config`` apart from the paper's ConvNeXt; empty if nothing."""
    # ConvNeXt V1 and V2 are named by ``info``'s first line already.
    parts = [] if config.model_type in ("convnext", "convnextv2") else [f"model_type {config.model_type}"]
    parts += [f"{k} {getattr(config, k)}" for k, default in STRUCTURE_DEFAULTS.items()
              if getattr(config, k) != default]
    return ", ".join(parts)
