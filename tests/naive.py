"""Obviously-correct loop versions of the ops, in float64, for the tests only.

They follow the torch definitions (NCHW convolution with weights (O, I, kh, kw)) rather than
the layouts of convnext_np.ops, so they also check the weight layout conversion.
"""

import math

import numpy as np


def conv2d_strided(x, w, b, stride):
    """x (N, Ci, H, W), w (Co, Ci, k, k): conv, no padding -> (N, Co, H', W')."""
    n, ci, h, w_ = x.shape
    co, _, k, _ = w.shape
    ho, wo = (h - k) // stride + 1, (w_ - k) // stride + 1
    out = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            for o in range(co):
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return out


def depthwise_conv(x, w, b):
    """x (N, C, H, W), w (C, 1, k, k), zero padding k//2 -> (N, C, H, W)."""
    n, c, h, w_ = x.shape
    k = w.shape[-1]
    p = k // 2
    out = np.zeros(x.shape)
    for ch in range(c):
        for i in range(h):
            for j in range(w_):
                acc = np.full(n, float(b[ch]))
                for di in range(k):
                    for dj in range(k):
                        y, z = i + di - p, j + dj - p
                        if 0 <= y < h and 0 <= z < w_:
                            acc += x[:, ch, y, z] * w[ch, 0, di, dj]
                out[:, ch, i, j] = acc
    return out


def layer_norm(v, w, b, eps):
    """One vector (C,)."""
    v = np.asarray(v, dtype=np.float64)
    mean = sum(v) / len(v)
    var = sum((t - mean) ** 2 for t in v) / len(v)
    return np.array([(t - mean) / math.sqrt(var + eps) * wi + bi for t, wi, bi in zip(v, w, b)])


def gelu(t):
    return 0.5 * t * (1 + math.erf(t / math.sqrt(2)))


def grn(x, w, b, eps=1e-6):
    """x (N, H, W, C) channels-last, w and b (C,): ConvNeXt V2's GRN, one number at a time."""
    n, h, w_, c = x.shape
    out = np.zeros(x.shape)
    for i in range(n):
        norms = [math.sqrt(sum(float(x[i, y, z, ch]) ** 2 for y in range(h) for z in range(w_)))
                 for ch in range(c)]
        mean = sum(norms) / c
        for ch in range(c):
            scale = norms[ch] / (mean + eps)
            for y in range(h):
                for z in range(w_):
                    t = float(x[i, y, z, ch])
                    out[i, y, z, ch] = float(w[ch]) * (t * scale) + float(b[ch]) + t
    return out
