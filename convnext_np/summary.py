"""Per-stage shapes, parameter counts and multiply-accumulates of a ConvNeXt (``convnext-np info``).

MACs count the convolutions and Linear layers (what the paper's "FLOPs" column counts: 4.5G
for ConvNeXt-T at 224); LayerNorm, GELU, layer scale, GRN and the residual adds are left out.
"""

from __future__ import annotations

import math

from .config import ConvNextConfig
from .weights import param_table, stem_width


def stage_rows(config: ConvNextConfig, height: int = 224, width: int | None = None) -> list[dict]:
    """One row each for the stem, the four stages and the head: name, output shape, params, MACs."""
    width = height if width is None else width
    params = {}
    for path, _, shape in param_table(config):
        part = "stem" if path[0] == "stem" else "head" if path[0] == "head" else f"stage{path[1] + 1}"
        params[part] = params.get(part, 0) + math.prod(shape)

    dims, k = config.hidden_sizes, config.num_labels
    h, w = height // 4, width // 4
    stem_macs = h * w * dims[0] * 4 * 4 * config.num_channels
    if config.stem_type != "patch":  # timm's overlapping stem: two 3x3 convs of stride 2
        mid = stem_width(config)
        stem_macs = (height // 2) * (width // 2) * mid * 9 * config.num_channels + h * w * dims[0] * 9 * mid
    rows = [{"name": "stem", "shape": (dims[0], h, w), "params": params["stem"], "macs": stem_macs}]
    for s, (depth, c, ks) in enumerate(zip(config.depths, dims, config.kernel_sizes)):
        macs = 0
        if s > 0:
            h, w = h // 2, w // 2
            macs += h * w * c * 2 * 2 * dims[s - 1]  # downsampling conv
        macs += depth * h * w * c * (ks * ks + 2 * 4 * c)  # dwconv + pwconv1 + pwconv2
        rows.append({"name": f"stage{s + 1}", "shape": (c, h, w), "params": params[f"stage{s + 1}"],
                     "macs": macs})
    width = config.head_hidden_size or dims[-1]  # timm's pre-logits Linear (convnext_large_mlp)
    rows.append({"name": "head", "shape": (k,) if k else (width,), "params": params.get("head", 0),
                 "macs": (dims[-1] * width if config.head_hidden_size else 0) + width * k})
    return rows
