"""The NumPy reference of every ConvNeXt op, channels-last (N, H, W, C), float32.

Each function is the plain formula of the paper (Liu et al. 2022, Sec. 2 and Fig. 4) in the
layout the model keeps its weights in after loading (see :mod:`convnext_np.weights`):

- convolution kernels with stride = kernel size ("patchify") are matrices (k*k*C_in, C_out),
  rows ordered (kh, kw, c_in);
- depthwise kernels are (7, 7, C);
- Linear weights are (in, out), so a layer is ``x @ w + b``.
"""

import numpy as np
from scipy.special import erf


def patchify(x, w, b, patch):
    """Conv with kernel = stride = ``patch``, no padding: the stem (4x4) and downsampling (2x2).

    Rows and columns that do not fill a whole patch are dropped, as a strided conv does.
    [N, H, W, Ci] -> [N, H//patch, W//patch, Co]
    """
    n, h, w_, ci = x.shape
    ho, wo = h // patch, w_ // patch
    x = x[:, : ho * patch, : wo * patch]
    x = x.reshape(n, ho, patch, wo, patch, ci).transpose(0, 1, 3, 2, 4, 5)  # [N,ho,wo,p,p,Ci]
    x = x.reshape(n, ho, wo, patch * patch * ci)
    return x @ w + b  # [N, ho, wo, Co]


def depthwise_conv(x, w, b):
    """Depthwise 7x7 conv, stride 1, zero padding 3, with bias (paper Sec. 2.4). w: (7, 7, C).

    [N, H, W, C] -> [N, H, W, C]
    """
    k = w.shape[0]
    pad = k // 2
    n, h, w_, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # [N, H+6, W+6, C]
    out = np.broadcast_to(b, x.shape).copy()
    for i in range(k):
        for j in range(k):
            out += xp[:, i : i + h, j : j + w_] * w[i, j]
    return out


def layer_norm(x, w, b, eps):
    """LayerNorm over the last axis (channels), biased variance, eps inside the sqrt (spec G.1)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as every ConvNeXt port uses (spec A.3)."""
    return 0.5 * x * (1.0 + erf(x * np.float32(1 / np.sqrt(2))))


def linear(x, w, b):
    """[..., in] -> [..., out]"""
    return x @ w + b


def global_avg_pool(x):
    """[N, H, W, C] -> [N, C]"""
    return x.mean(axis=(1, 2))
