"""Tolerances and realistic random weights, for our tests and for other ports' test suites.

Random weights are drawn per tensor from a seed and the tensor's name, so the same state
dict can be rebuilt anywhere from its list of names and shapes, with NumPy alone. They are
*realistic*: layer scale, LayerNorm affine, GRN affine and biases are drawn wide. The default
inits (layer scale 1e-6, GRN weight and bias 0) make every block nearly the identity and would
hide bugs in the blocks.
"""

from __future__ import annotations

import zlib

import numpy as np

from .weights import make_divisible  # the tiered stem's width, as timm computes it

# Agreement with the reference implementations (transformers, timm) in float32.
LOGITS_ATOL = 2e-4  # absolute, on logits
POOLED_ATOL = 2e-4  # absolute, on the pooled (final-LayerNorm) features
HIDDEN_RTOL = 1e-4  # on hidden states, relative to each tensor's max abs value
# On pixel_values: one uint8 step is 1/255/std >= 0.017 after normalization, so any resampling
# or crop difference is far above this, while the few-ulp differences of the rescale arithmetic
# (float64 multiply, float32 divide, torchvision's fused form: at most 2.4e-7 on our test
# photos) stay below it.
PIXEL_ATOL = 1e-6


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def realistic_tensor(name: str, shape, seed: int = 0) -> np.ndarray:
    """One float32 tensor, its distribution chosen by its role, read off its name and rank.

    - ConvNeXt V2's GRN weight and bias (any name with ``grn.``, whatever its shape: transformers'
      and facebookresearch's (1, 1, 1, 4C), timm's (4C,)): N(0, 0.5), so that GRN matters (it is
      the identity at its zero init);
    - layer scale (``gamma`` / ``layer_scale_parameter``): uniform in [0.1, 1], so every block
      contributes (trained ConvNeXts have values from ~1e-3 to ~1);
    - LayerNorm weight (any other 1-D ``weight``): 1 + N(0, 0.3);
    - bias: N(0, 0.2);
    - conv and Linear weights: N(0, 1 / fan_in), which keeps activations of order one.
    """
    rng = _rng(seed, name)
    shape = tuple(shape)
    if "grn." in name:
        x = rng.normal(0.0, 0.5, shape)
    elif name.endswith(("gamma", "layer_scale_parameter")):
        x = rng.uniform(0.1, 1.0, shape)
    elif name.endswith("bias"):
        x = rng.normal(0.0, 0.2, shape)
    elif len(shape) == 1:
        x = 1.0 + rng.normal(0.0, 0.3, shape)
    else:
        x = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[1:]))
    return x.astype(np.float32)


def realistic_state_dict(shapes: dict, seed: int = 0) -> dict:
    """name -> realistic random tensor, for a dict of name -> shape in any naming scheme."""
    return {name: realistic_tensor(name, shape, seed) for name, shape in shapes.items()}


def random_pixels(shape, seed: int = 0) -> np.ndarray:
    """Normalized-looking input, N(0, 1), float32, NCHW."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def timm_state_dict_shapes(depths, dims, num_classes, *, stem_type="patch", norm_layer="layernorm",
                           head_norm_first=False, head_hidden_size=None, conv_mlp=False,
                           kernel_sizes=(7, 7, 7, 7)) -> dict:
    """name -> shape of a timm ``ConvNeXt`` state dict (``timm/models/convnext.py``), for any of
    timm's structural variants; with :func:`realistic_state_dict`, a timm checkpoint without timm.
    The live tests check these names and shapes against timm's own models."""
    bias = norm_layer == "layernorm"  # timm's SimpleNorm has a weight only

    def norm(prefix, c):
        return {f"{prefix}.weight": (c,), **({f"{prefix}.bias": (c,)} if bias else {})}

    def conv(prefix, co, ci, k):
        return {f"{prefix}.weight": (co, ci, k, k), f"{prefix}.bias": (co,)}

    c0 = dims[0]
    if stem_type == "patch":
        shapes = {**conv("stem.0", c0, 3, 4), **norm("stem.1", c0)}
    else:
        mid = make_divisible(c0 // 2) if stem_type == "overlap_tiered" else c0
        second, last = (2, 3) if stem_type == "overlap_act" else (1, 2)
        shapes = {**conv("stem.0", mid, 3, 3), **conv(f"stem.{second}", c0, mid, 3), **norm(f"stem.{last}", c0)}
    for s, (depth, c, k) in enumerate(zip(depths, dims, kernel_sizes)):
        if s > 0:
            shapes.update({**norm(f"stages.{s}.downsample.0", dims[s - 1]),
                           **conv(f"stages.{s}.downsample.1", c, dims[s - 1], 2)})
        for b in range(depth):
            p = f"stages.{s}.blocks.{b}"
            mlp = (1, 1) if conv_mlp else ()
            shapes.update({f"{p}.gamma": (c,), f"{p}.conv_dw.weight": (c, 1, k, k), f"{p}.conv_dw.bias": (c,),
                           **norm(f"{p}.norm", c),
                           f"{p}.mlp.fc1.weight": (4 * c, c, *mlp), f"{p}.mlp.fc1.bias": (4 * c,),
                           f"{p}.mlp.fc2.weight": (c, 4 * c, *mlp), f"{p}.mlp.fc2.bias": (c,)})
    c3 = width = dims[-1]
    shapes.update(norm("norm_pre" if head_norm_first else "head.norm", c3))
    if head_hidden_size:
        shapes.update({"head.pre_logits.fc.weight": (head_hidden_size, c3),
                       "head.pre_logits.fc.bias": (head_hidden_size,)})
        width = head_hidden_size
    if num_classes:
        shapes.update({"head.fc.weight": (num_classes, width), "head.fc.bias": (num_classes,)})
    return shapes
