"""The NumPy reference of every ConvNeXt op, channels-last (N, H, W, C), float32.

Each function is the plain formula of the paper (Liu et al. 2022, Sec. 2 and Fig. 4) in the
layout the model keeps its weights in after loading (see :mod:`convnext_np.weights`):

- convolution kernels with stride = kernel size ("patchify") are matrices (k*k*C_in, C_out),
  rows ordered (kh, kw, c_in);
- depthwise kernels are (k, k, C), k = 7 in the paper;
- Linear weights are (in, out), so a layer is ``x @ w + b``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


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
    return linear(x, w, b)  # [N, ho, wo, Co]


def depthwise_conv(x, w, b):
    """Depthwise k x k conv, stride 1, zero padding k // 2, with bias. w: (k, k, C), k odd: 7 in
    the paper (Sec. 2.4), 5 and 3 in some stages of timm's ``test_convnext3``.

    [N, H, W, C] -> [N, H, W, C]
    """
    k = w.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # [N, H+k-1, W+k-1, C]
    windows = sliding_window_view(xp, (k, k), axis=(1, 2))  # [N, H, W, C, k, k], a view
    out = np.einsum("nhwcij,ijc->nhwc", windows, w)  # out[n,h,w,c] = sum_ij xp[n,h+i,w+j,c] w[i,j,c]
    out += b
    return out


def layer_norm(x, w, b, eps):
    """LayerNorm over the last axis (channels), biased variance, eps inside the sqrt, as
    facebookresearch's ``LayerNorm`` and ``F.layer_norm`` compute it."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = np.square(xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


AS_P = 0.3275911
AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # Abramowitz & Stegun 7.1.26
GELU_CHUNK = 1 << 16  # elements per step of gelu (256 KiB of float32 per buffer)


def gelu(x):
    """Exact GELU, x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016, Sec. 2), as
    every ConvNeXt port uses (``nn.GELU()`` in facebookresearch, transformers and timm).
    In float32 within 5e-7 of the float64 value.

    Written as ``max(x, 0) - |x| Q(|x|)``, where Q(a) = 1 - Phi(a) = erfc(a / sqrt 2) / 2 is the
    normal upper tail (x Phi(x) is x - x Q(x) for x >= 0 and x Q(-x) below), and erfc is
    Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + a2 t + ... + a5 t^4) exp(-z^2),
    t = 1 / (1 + p z), |error| < 1.5e-7. With z = a / sqrt 2, the constants below fold in the
    1 / sqrt 2 and the 1 / 2.

    Evaluated ``GELU_CHUNK`` elements at a time, each step writing into the same three buffers
    (``out=``), so that no temporary is allocated per step and the buffers stay in the CPU's
    caches; a new array per step made it 1.7x slower.
    |x| is capped at 40, where |x| Q(|x|) is 0 even in float64, so that gelu(inf) is inf.

    The cap and max(x, 0) are ``np.clip`` with both bounds, and 1 / t is ``np.divide``: the same
    values as ``np.minimum`` and ``np.maximum`` against a scalar and ``np.reciprocal``, which
    NumPy 2.4 ran 1.7-3x slower per element on a Zen 5 (``benchmarks/bench_numpy_steps.py``);
    ``np.clip`` keeps the sign of -0.0, so gelu(-0.0) is -0.0, as x Phi(x) is.
    """
    p = x.dtype.type(AS_P * 0.5**0.5)
    a1, a2, a3, a4, a5 = (x.dtype.type(0.5 * c) for c in AS_A)
    out = np.empty(x.shape, x.dtype)  # C order, so that out.reshape(-1) is a view of it
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    buffers = np.empty((3, min(GELU_CHUNK, flat.size)), x.dtype)
    for i in range(0, flat.size, GELU_CHUNK):
        v, o = flat[i : i + GELU_CHUNK], flat_out[i : i + GELU_CHUNK]
        a, t, q = buffers[:, : v.size]
        np.clip(v, -40, 40, out=a)
        np.abs(a, out=a)
        np.multiply(a, p, out=t)
        t += 1
        np.divide(1, t, out=t)  # t = 1 / (1 + p |x| / sqrt 2)
        np.multiply(t, a5, out=q)  # q = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) / 2
        for c in (a4, a3, a2, a1):
            q += c
            q *= t
        q *= a  # |x| Q(|x|) = |x| q exp(-x^2 / 2)
        np.multiply(a, a, out=t)
        t *= -0.5
        np.exp(t, out=t)
        q *= t
        np.clip(v, 0, np.inf, out=o)  # max(x, 0)
        o -= q
    return out


def gelu_tanh(x):
    """GELU's tanh approximation (Hendrycks & Gimpel 2016, Sec. 2),
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): PyTorch's ``nn.GELU(approximate='tanh')``,
    timm's ``act_layer='gelu_tanh'`` (its ``test_convnext`` models), transformers'
    ``hidden_act='gelu_pytorch_tanh'``."""
    c = x.dtype.type(np.sqrt(2 / np.pi))
    return 0.5 * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))


def silu(x):
    """SiLU, x sigmoid(x) (Elfwing et al. 2018, Eq. 3; Ramachandran et al.'s "Swish"): PyTorch's
    ``nn.SiLU``, timm's ``act_layer='silu'`` (``test_convnext3``). The sigmoid is scipy's
    ``expit``, which does not overflow for large negative x as 1 / (1 + exp(-x)) would."""
    from scipy.special import expit  # imported on first use: scipy.special takes ~0.25 s to import

    return x * expit(x)


def linear(x, w, b):
    """[..., in] -> [..., out], as one GEMM over all positions: (N*H*W, in) @ (in, out)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    y += b
    return y.reshape(*x.shape[:-1], w.shape[1])


GRN_EPS = np.float32(1e-6)  # added to the channel mean of the norms (not inside a sqrt)


def grn(x, w, b):
    """Global Response Normalization, ConvNeXt V2 (Woo et al. 2023, Sec. 3, Algorithm 1).

    Per image and channel, the L2 norm over all positions, Gx; divided by its mean over the
    channels plus 1e-6, Nx; then ``w * (x * Nx) + b + x`` with the learned ``w`` and ``b`` (C,).
    [N, H, W, C] -> [N, H, W, C]
    """
    gx = np.sqrt(np.square(x).sum(axis=(1, 2), keepdims=True))  # [N, 1, 1, C]
    nx = gx / (gx.mean(axis=-1, keepdims=True) + GRN_EPS)
    return w * (x * nx) + b + x


def global_avg_pool(x):
    """[N, H, W, C] -> [N, C]"""
    return x.mean(axis=(1, 2))


# --- timm's structural variants (``timm/models/convnext.py``) -----------------------------------

def conv2d(x, w, b, kernel, stride, padding):
    """Dense conv with zero padding and any stride: the 3x3, stride-2, padding-1 convs of timm's
    overlapping stem. The kernel x kernel windows are gathered into rows ordered (kh, kw, c_in),
    the layout of the patchify weights, then one GEMM.

    [N, H, W, Ci] -> [N, (H + 2p - k)//s + 1, (W + 2p - k)//s + 1, Co]
    """
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (xp.shape[1] - kernel) // stride + 1
    wo = (xp.shape[2] - kernel) // stride + 1
    windows = [xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
               for i in range(kernel) for j in range(kernel)]  # k*k x [N, ho, wo, Ci]
    return linear(np.concatenate(windows, axis=-1), w, b)


def simple_norm(x, w, b, eps):
    """timm's SimpleNorm (``timm/layers/fast_norm.py`` ``simple_norm``; ``convnext_zepto_rms``):
    x / sqrt(var(x) + eps) * w over the channels. Unlike LayerNorm, x keeps its mean, the variance
    is torch.var's unbiased one (divided by C - 1), and there is no bias (``b`` is None)."""
    var = x.var(axis=-1, ddof=1, keepdims=True)
    return x / np.sqrt(var + eps) * w
