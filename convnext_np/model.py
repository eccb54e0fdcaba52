"""The ConvNeXt forward pass, top-down (Liu et al. 2022, "A ConvNet for the 2020s", Fig. 4), and
ConvNeXt V2's (Woo et al. 2023), which differs only inside the block.

References: the paper; facebookresearch/ConvNeXt ``models/convnext.py``; Hugging Face
transformers ``modeling_convnext.py``; timm ``convnext.py``. Every function works channels-last
(N, H, W, C); the parameter names are those of :mod:`convnext_np.weights`, so a block's
parameters go in as ``block(x, **params, eps=...)``. ``ops`` is a backend: the NumPy reference
:mod:`convnext_np.ops`, or a fast path with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backends, threads
from .config import ConvNextConfig
from .errors import ImageError

MIN_INPUT_SIZE = 32  # four downsamplings (4, 2, 2, 2) leave at least one pixel


def stem(x, w, b, norm_w, norm_b, *, eps, ops):
    """Patchify stem: 4x4 conv, stride 4, then LayerNorm (paper Sec. 2.2)."""
    x = ops.patchify(x, w, b, 4)  # [N, H, W, 3] -> [N, H/4, W/4, C0]
    return ops.layer_norm(x, norm_w, norm_b, eps)


def downsample(x, norm_w, norm_b, w, b, *, eps, ops):
    """LayerNorm, then 2x2 conv with stride 2, between stages (paper Sec. 2.6)."""
    x = ops.layer_norm(x, norm_w, norm_b, eps)
    return ops.patchify(x, w, b, 2)  # [N, H, W, C] -> [N, H/2, W/2, C']


def block(x, dwconv_w, dwconv_b, norm_w, norm_b, pwconv1_w, pwconv1_b, pwconv2_w, pwconv2_b,
          gamma=None, grn_w=None, grn_b=None, *, eps, ops):
    """ConvNeXt block (paper Fig. 4): dwconv 7x7, LN, Linear C->4C, GELU, Linear 4C->C, layer
    scale ``gamma``, residual. Stochastic depth is the identity at inference.

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


def head(x, norm_w, norm_b, fc_w=None, fc_b=None, *, eps, ops):
    """Global average pool, then LayerNorm, then Linear (spec A.4: the order in every port)."""
    pooled = ops.layer_norm(ops.global_avg_pool(x), norm_w, norm_b, eps)  # [N, h, w, C] -> [N, C]
    logits = None if fc_w is None else ops.linear(pooled, fc_w, fc_b)  # [N, C] -> [N, K]
    return pooled, logits


def forward(params, x, *, eps, head_eps, ops):
    """[N, H, W, 3] -> (hidden states: stem and 4 stages, pooled, logits), channels-last."""
    # A backend may fuse a whole layer, same signature (kernels.stem, .downsample and .block do).
    stem_ = getattr(ops, "stem", stem)
    downsample_ = getattr(ops, "downsample", downsample)
    block_ = getattr(ops, "block", block)
    x = stem_(x, **params["stem"], eps=eps, ops=ops)
    hidden = [x]
    for stage in params["stages"]:
        if stage["downsample"] is not None:
            x = downsample_(x, **stage["downsample"], eps=eps, ops=ops)
        for p in stage["blocks"]:
            x = block_(x, **p, eps=eps, ops=ops)
        hidden.append(x)
    pooled, logits = head(x, **params["head"], eps=head_eps, ops=ops)
    return hidden, pooled, logits


def _read_only(tree):
    """Mark every array of the parameter tree read-only (in place) and return the tree.

    A loaded model's weights are constants: writing to one raises instead of changing the model
    silently, and the Numba backend may keep a derived copy of each (kernels.pack).
    """
    if isinstance(tree, (dict, list)):
        for value in tree.values() if isinstance(tree, dict) else tree:
            _read_only(value)
    array = tree
    while isinstance(array, np.ndarray):  # the array, and the arrays it views (a reshaped copy, say)
        array.flags.writeable = False
        array = array.base
    return tree


@dataclass
class ConvNextOutput:
    """What a forward pass returns; names as in transformers (``pooled`` = ``pooler_output``)."""

    logits: np.ndarray | None  # (N, num_labels); None for a model without a head
    pooled: np.ndarray  # (N, C_last): average pool, then the final LayerNorm
    last_hidden_state: np.ndarray  # (N, C_last, H//32, W//32), before pooling and norm
    hidden_states: tuple | None = None  # 5 x NCHW: stem output, then each stage's output


class ConvNeXt:
    """A loaded ConvNeXt. Call it on float32 ``pixel_values`` (N, 3, H, W), NCHW as in HF.

    Build one with :func:`convnext_np.from_pretrained`; ``params`` is the tree that
    :func:`convnext_np.weights.to_params` makes.
    """

    def __init__(self, config: ConvNextConfig, params: dict, *, backend: str = "auto",
                 preprocessor=None, source: str | None = None, num_threads: int | None = None):
        self.config = config
        self.params = _read_only(params)
        self.backend = backends.resolve(backend)
        self.num_threads = threads.check(num_threads)  # None: as the environment configures
        self.preprocessor = preprocessor
        self.source = source

    def __repr__(self):
        variant = self.config.variant() or f"depths={self.config.depths}"
        if self.config.model_type == "convnextv2":
            variant = f"V2 {variant}"
        return (f"ConvNeXt({variant}, num_labels={self.config.num_labels}, "
                f"backend={self.backend!r}, source={self.source!r})")

    def __call__(self, pixel_values, output_hidden_states: bool = False) -> ConvNextOutput:
        x = self._check_input(pixel_values)
        with threads.limit(self.backend, self.num_threads):
            hidden, pooled, logits = forward(
                self.params, np.ascontiguousarray(x.transpose(0, 2, 3, 1)),  # NCHW -> NHWC
                eps=self.config.norm_eps, head_eps=self.config.layer_norm_eps,
                ops=backends.get(self.backend))
        if not output_hidden_states:
            hidden = hidden[-1:]
        nchw = tuple(np.ascontiguousarray(h.transpose(0, 3, 1, 2)) for h in hidden)  # -> NCHW
        return ConvNextOutput(logits=logits, pooled=pooled, last_hidden_state=nchw[-1],
                              hidden_states=nchw if output_hidden_states else None)

    def save_pretrained(self, directory) -> None:
        """Write the model in Hugging Face layout (see :func:`convnext_np.loading.save_pretrained`)."""
        from .loading import save_pretrained

        save_pretrained(self, directory)

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.config.num_channels:
            raise ImageError(
                f"pixel_values must have shape (N, {self.config.num_channels}, H, W) (NCHW), "
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
