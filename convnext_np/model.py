"""The ConvNeXt forward pass, top-down (Liu et al. 2022, "A ConvNet for the 2020s", Fig. 4), and
ConvNeXt V2's (Woo et al. 2023), which differs only inside the block.

References: the paper; facebookresearch/ConvNeXt ``models/convnext.py``; Hugging Face
transformers ``modeling_convnext.py``; timm ``convnext.py``. Every function works channels-last
(N, H, W, C); the parameter names are those of :mod:`convnext_np.weights`, so a block's
parameters go in as ``block(x, **params, eps=...)``. ``ops`` is a backend: the NumPy reference
:mod:`convnext_np.ops`, or a fast path with the same functions. Last, :func:`run` is the
network as transformers' classes present it: NCHW pixel values in, every output NCHW
(:class:`ConvNextOutput`). The module knows no files; a loaded model is
:class:`convnext_np.ConvNeXt` (:mod:`convnext_np.loading`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, fields

import numpy as np

from . import backbone, ops as numpy_ops
from .config import HIDDEN_ACTS, ConvNextConfig
from .errors import ImageError

MIN_INPUT_SIZE = 32  # four downsamplings (4, 2, 2, 2) leave at least one pixel


def stem(x, w, b, norm_w, norm_b, *, eps, ops):
    """Patchify stem: 4x4 conv, stride 4, then LayerNorm (paper Sec. 2.2)."""
    x = ops.patchify(x, w, b, 4)  # [N, H, W, 3] -> [N, H/4, W/4, C0]
    return ops.layer_norm(x, norm_w, norm_b, eps)


def overlap_stem(x, conv1_w, conv1_b, w, b, norm_w, norm_b, *, act, eps, ops):
    """timm's overlapping stem (the ``_ols`` models): 3x3 conv, stride 2, padding 1; the model's
    activation (``ops.gelu``, see :func:`with_act`) if ``act`` (``stem_type='overlap_act'``); a
    second such conv; then the norm. Total stride 4."""
    x = ops.conv2d(x, conv1_w, conv1_b, 3, 2, 1)  # [N, H, W, 3] -> [N, H/2, W/2, C_mid]
    if act:
        x = ops.gelu(x)
    x = ops.conv2d(x, w, b, 3, 2, 1)  # -> [N, H/4, W/4, C0]
    return ops.layer_norm(x, norm_w, norm_b, eps)


def downsample(x, norm_w, norm_b, w, b, *, eps, ops):
    """LayerNorm, then 2x2 conv with stride 2, between stages (paper Sec. 2.6)."""
    x = ops.layer_norm(x, norm_w, norm_b, eps)
    return ops.patchify(x, w, b, 2)  # [N, H, W, C] -> [N, H/2, W/2, C']


def block(x, dwconv_w, dwconv_b, norm_w, norm_b, pwconv1_w, pwconv1_b, pwconv2_w, pwconv2_b,
          gamma=None, grn_w=None, grn_b=None, *, eps, ops):
    """ConvNeXt block (paper Fig. 4): dwconv 7x7, LN, Linear C->4C, GELU, Linear 4C->C, layer
    scale ``gamma``, residual. Stochastic depth is the identity at inference. The dwconv's kernel
    size is that of ``dwconv_w`` (timm's ``kernel_sizes``); timm's other activations come in
    ``ops`` (:func:`with_act`).

    The block's parameters say which block it is: V1 has layer scale ``gamma``; ConvNeXt V2
    (Woo et al. 2023, Sec. 3) has none, and a GRN after the GELU instead (``grn_w``, ``grn_b``).
    """
    r = x
    x = ops.depthwise_conv(x, dwconv_w, dwconv_b)
    x = ops.layer_norm(x, norm_w, norm_b, eps)
    x = ops.linear(x, pwconv1_w, pwconv1_b)  # [N, H, W, C] -> [N, H, W, 4C]
    x = ops.gelu(x)
    if grn_w is not None:
        x = ops.grn(x, grn_w, grn_b)  # V2
    x = ops.linear(x, pwconv2_w, pwconv2_b)  # [N, H, W, 4C] -> [N, H, W, C]
    if gamma is not None:
        x = gamma * x  # V1
    return r + x


def head(x, norm_w, norm_b, fc_w=None, fc_b=None, pre_w=None, pre_b=None, *, eps, ops):
    """Global average pool, then LayerNorm, then Linear (the order in every port: facebookresearch
    ``forward_features``, transformers ``ConvNextModel``, timm ``NormMlpClassifierHead``).

    timm's ``convnext_large_mlp`` puts a Linear (``head.pre_logits.fc``) and GELU between the
    norm and the classifier; ``pooled`` is then their output, what timm's
    ``forward_head(pre_logits=True)`` returns."""
    pooled = ops.layer_norm(ops.global_avg_pool(x), norm_w, norm_b, eps)  # [N, h, w, C] -> [N, C]
    if pre_w is not None:
        pooled = ops.gelu(ops.linear(pooled, pre_w, pre_b))  # [N, C] -> [N, head_hidden_size]
    logits = None if fc_w is None else ops.linear(pooled, fc_w, fc_b)  # [N, C] -> [N, K]
    return pooled, logits


def norm_first_head(x, norm_w, norm_b, fc_w=None, fc_b=None, *, eps, ops):
    """timm's ``_hnf`` head: the norm over every position of the map first, then pool, then fc."""
    pooled = ops.global_avg_pool(ops.layer_norm(x, norm_w, norm_b, eps))
    logits = None if fc_w is None else ops.linear(pooled, fc_w, fc_b)
    return pooled, logits


def token_sequence(x, norm_w, norm_b, *, eps, ops):
    """DINOv3 ConvNeXt's output (transformers ``DINOv3ConvNextModel``): the pooled token, then every
    spatial token in row-major order, each through the final LayerNorm. Token 0 is ``pooled``.

    [N, h, w, C] -> [N, 1 + h*w, C]
    """
    n, h, w, c = x.shape
    tokens = np.concatenate([ops.global_avg_pool(x)[:, None], x.reshape(n, h * w, c)], axis=1)
    return ops.layer_norm(tokens, norm_w, norm_b, eps)


def unfused(ops, **replacements):
    """``ops`` without the backend's fused layers (``stem``, ``downsample``, ``block``), which
    compute the paper's LayerNorm and GELU inside; every other op the backend's where it has one,
    NumPy's otherwise; then ``replacements``."""
    fused = ("stem", "downsample", "block")
    chosen = {name: getattr(ops, name, value) for name, value in vars(numpy_ops).items()
              if callable(value) and not name.startswith("_") and name not in fused}
    return types.SimpleNamespace(**{**chosen, **replacements})


def with_norm(ops, kind):
    """``ops`` with every LayerNorm replaced by timm's ``norm_layer`` of that ``kind``.

    timm swaps the norm of the whole network at once (``_get_norm_layers``); so does this."""
    return unfused(ops, layer_norm=NORMS[kind])


NORMS = {"simplenorm": numpy_ops.simple_norm}


def with_act(ops, act):
    """``ops`` whose ``gelu`` is timm's ``act_layer`` ``act``, the name of an activation of
    :mod:`convnext_np.ops` (``gelu_tanh``, ``silu``).

    timm builds every block's MLP and the ``overlap_act`` stem with ``act_layer``; so this swaps
    the activation of all of them at once, as :func:`with_norm` swaps the norm. (The MLP head
    keeps GELU in timm, ``NormMlpClassifierHead(act_layer='gelu')``: :func:`forward` gives the
    head the ops from before.)"""
    return unfused(ops, gelu=getattr(numpy_ops, act))


def forward(params, x, *, eps, head_eps, ops, act="gelu", stem_type="patch", norm_layer="layernorm",
            head_norm_first=False):
    """[N, H, W, 3] -> (hidden states: stem and 4 stages, pooled, logits), channels-last.

    ``act`` is the blocks' activation, a function name of :mod:`convnext_np.ops`
    (:data:`convnext_np.config.HIDDEN_ACTS`); the keywords after it are timm's structural
    variants (see :class:`ConvNextConfig`). ``pooled`` and ``logits`` are None for a model
    without a final norm (a Backbone)."""
    if norm_layer != "layernorm":
        ops = with_norm(ops, norm_layer)
    head_ops = ops
    if act != "gelu":
        ops = with_act(ops, act)
    # A backend may fuse a whole layer, same signature (kernels.stem, .downsample and .block do).
    stem_ = getattr(ops, "stem", stem)
    downsample_ = getattr(ops, "downsample", downsample)
    block_ = getattr(ops, "block", block)
    if stem_type == "patch":
        x = stem_(x, **params["stem"], eps=eps, ops=ops)
    else:
        x = overlap_stem(x, **params["stem"], act=stem_type == "overlap_act", eps=eps, ops=ops)
    hidden = [x]
    for stage in params["stages"]:
        if stage["downsample"] is not None:
            x = downsample_(x, **stage["downsample"], eps=eps, ops=ops)
        for p in stage["blocks"]:
            x = block_(x, **p, eps=eps, ops=ops)
        hidden.append(x)
    if not params["head"]:
        return hidden, None, None
    head_ = norm_first_head if head_norm_first else head
    pooled, logits = head_(x, **params["head"], eps=head_eps, ops=head_ops)
    return hidden, pooled, logits


def check_pixel_values(x, num_channels: int) -> np.ndarray:
    """``x`` as float32 NCHW pixel values of ``num_channels`` channels, or :class:`ImageError`
    saying what is wrong with it (shape, an empty batch, too small, not floats, not finite)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != num_channels:
        raise ImageError(f"pixel_values must have shape (N, {num_channels}, H, W) (NCHW), "
                         f"got {x.shape}")
    if x.shape[0] == 0:
        raise ImageError("pixel_values is an empty batch (N = 0)")
    if min(x.shape[2:]) < MIN_INPUT_SIZE:
        raise ImageError(f"pixel_values must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                         f"pixels, got {x.shape[2]}x{x.shape[3]}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ImageError(f"pixel_values must be floating point (normalized pixels), got "
                         f"{x.dtype}; use model.preprocessor to turn images into pixel_values")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ImageError("pixel_values contains NaN or infinite values")
    return x


@dataclass
class ConvNextOutput:
    """What a forward pass returns; names as in transformers (``pooled`` = ``pooler_output``)."""

    logits: np.ndarray | None  # (N, num_labels); None for a model without a head
    pooled: np.ndarray | None  # (N, C_last): average pool, then the final LayerNorm; None for a Backbone
    last_hidden_state: np.ndarray  # (N, C_last, H//32, W//32), before pooling and norm
    hidden_states: tuple | None = None  # 5 x NCHW: stem output, then each stage's output
    feature_maps: tuple | None = None  # NCHW, one per stage asked for (out_features)
    # DINOv3 ConvNeXt only: (N, 1 + h*w, C_last), transformers' DINOv3ConvNextModel
    # ``last_hidden_state`` (its ``pooler_output`` is token 0, which equals ``pooled``).
    sequence: np.ndarray | None = None


def concatenate(outputs) -> ConvNextOutput:
    """The outputs of :func:`run` on consecutive groups of one batch's images, as the batch's
    output: every array joined along the batch axis (each map of a tuple on its own), and
    ``last_hidden_state`` the last of ``hidden_states``, as :func:`run` returns it."""
    def join(values):
        if values[0] is None:
            return None
        if isinstance(values[0], tuple):
            return tuple(np.concatenate(maps) for maps in zip(*values))
        return np.concatenate(values)

    joined = {f.name: join([getattr(o, f.name) for o in outputs]) for f in fields(ConvNextOutput)}
    if joined["hidden_states"] is not None:
        joined["last_hidden_state"] = joined["hidden_states"][-1]
    return ConvNextOutput(**joined)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW


def run(params, config: ConvNextConfig, pixel_values, *, ops, out_features=None,
        output_hidden_states: bool = True) -> ConvNextOutput:
    """The network on NCHW ``pixel_values`` (checked by :func:`check_pixel_values`, in the
    dtype of ``params``), with every output transformers' classes give, NCHW as theirs:
    :func:`forward` on the channels-last input, then the maps of ``out_features``
    (:func:`convnext_np.backbone.feature_maps`) and DINOv3's token sequence.
    ``output_hidden_states=False`` keeps only the last map."""
    c = config
    x = np.ascontiguousarray(pixel_values.transpose(0, 2, 3, 1))  # NCHW -> NHWC
    hidden, pooled, logits = forward(
        params, x, eps=c.norm_eps, head_eps=c.layer_norm_eps, ops=ops, act=HIDDEN_ACTS[c.hidden_act],
        stem_type=c.stem_type, norm_layer=c.norm_layer, head_norm_first=c.head_norm_first)
    maps = None
    if out_features:
        maps = backbone.feature_maps(hidden, params.get("backbone_norms"), out_features,
                                     pixels=x, ops=ops)
    sequence = None
    if c.model_type == "dinov3_convnext" and c.final_norm:
        sequence = token_sequence(hidden[-1], params["head"]["norm_w"], params["head"]["norm_b"],
                                  eps=c.layer_norm_eps, ops=ops)
    hidden = tuple(map(_nchw, hidden if output_hidden_states else hidden[-1:]))
    return ConvNextOutput(logits=logits, pooled=pooled, last_hidden_state=hidden[-1],
                          hidden_states=hidden if output_hidden_states else None, sequence=sequence,
                          feature_maps=None if maps is None else tuple(map(_nchw, maps)))
