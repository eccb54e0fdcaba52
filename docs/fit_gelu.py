"""Fit the rational function that the Numba kernels' GELU uses for the normal upper tail.

    python docs/fit_gelu.py        # prints the coefficients of kernels._GELU_P and _GELU_Q

GELU(x) = x Phi(x) = max(x, 0) - |x| Q(|x|), where Q(a) = erfc(a / sqrt 2) / 2 (the form
``ops.gelu`` documents). ``kernels._gelu1`` computes Q on [0, 5.5] as one rational function

    R(a) = (p0 + p1 a + ... + p5 a^5) / (1 + q1 a + ... + q9 a^9),

which needs no exponential (a formula through exp(-a^2 / 2) does), so that it is a short run of
FMAs and one division per vector of elements. Past 5.5 the kernel takes |x| Q(|x|) as 0.

The fit minimises GELU's own error, max |a (R(a) - Q(a))| (R's error weighted by |x|; below
a = 0.35 the weight is held at 0.35 so that R stays close to Q near 0 too), over a dense grid
of [0, 5.5]. Minimising the largest error of a rational function is not a linear problem, so
each step makes it one: with the previous step's denominator D held fixed as a weight,
max |num(a) - Q(a) den(a)| / D(a) is linear in the coefficients of num and den and is solved
exactly as a linear program (scipy's HiGHS). The steps repeat; the best of them by the true
error is kept.

The float64 fit is then rounded to float32 and evaluated in float32 as the kernel's formula
is, but without the FMAs the compiled kernel contracts it into (so slightly less exactly); both
errors are printed. Deterministic: the same coefficients on every run.
"""

from __future__ import annotations

import numpy as np
import scipy.special
from scipy.optimize import linprog

CUTOFF = 5.5  # kernels._TAIL_CUTOFF: past it |x| Q(|x|) < 1.1e-7 and is taken as 0
NUM, DEN = 5, 9  # degrees of the numerator and the denominator
STEPS = 40


def tail(a):
    """Q(a) = P(Z > a) for a standard normal Z, in float64."""
    return 0.5 * scipy.special.erfc(a / np.sqrt(2.0))


def fit():
    """(p, q): the numerator's coefficients p0..p5 and the denominator's 1, q1..q9, float64."""
    a = np.unique(np.concatenate([np.linspace(0.0, CUTOFF, 4000),
                                  CUTOFF * np.sin(np.linspace(0.0, np.pi / 2, 2000))]))
    target, weight = tail(a), np.maximum(a, 0.35)
    powers_p = np.stack([a ** k for k in range(NUM + 1)], axis=1)
    powers_q = np.stack([a ** k for k in range(1, DEN + 1)], axis=1)
    den = np.ones_like(a)
    best_err, best = np.inf, None
    n = NUM + 1 + DEN  # unknowns p0..p5, q1..q9; then the bound e on the weighted error
    for _ in range(STEPS):
        rows = np.hstack([powers_p, -target[:, None] * powers_q]) * (weight / den)[:, None]
        rhs = target * weight / den
        one = np.ones((len(a), 1))
        lp = linprog(np.r_[np.zeros(n), 1.0],
                     A_ub=np.vstack([np.hstack([rows, -one]), np.hstack([-rows, -one])]),
                     b_ub=np.r_[rhs, -rhs], bounds=[(None, None)] * n + [(0, None)], method="highs")
        if lp.status != 0:
            raise RuntimeError(f"the linear program failed: {lp.message}")
        p, q = lp.x[:NUM + 1], np.r_[1.0, lp.x[NUM + 1:n]]
        den = np.polyval(q[::-1], a)
        if (den <= 0).any():  # a pole in the interval: stop at the best step so far
            if best is None:
                raise RuntimeError("the first step's denominator has a zero in [0, CUTOFF]")
            break
        err = np.abs(weight * (np.polyval(p[::-1], a) / den - target)).max()
        if err < best_err:
            best_err, best = err, (p, q)
    return best


def gelu32(x, p, q):
    """GELU in float32 by kernels._gelu1's formula (Horner's rule, one division), without FMAs."""
    a = np.abs(x)
    t = np.minimum(a, np.float32(CUTOFF))
    num, den = np.float32(0), np.float32(0)
    for c in p[::-1]:
        num = num * t + c
    for c in q[::-1]:
        den = den * t + c
    r = np.where(a > np.float32(CUTOFF), np.float32(0), num / den)
    return np.maximum(x, np.float32(0)) - t * r


def main():
    p, q = fit()
    a = np.linspace(0.0, CUTOFF, 200001)
    err64 = np.abs(np.maximum(a, 0.35) * (np.polyval(p[::-1], a) / np.polyval(q[::-1], a) - tail(a))).max()
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    x = np.linspace(-9.0, 9.0, 3000001).astype(np.float32)
    exact = x.astype(np.float64) * tail(-x.astype(np.float64))  # x Phi(x)
    err32 = np.abs(gelu32(x, p32, q32) - exact).max()
    print(f"_GELU_P = {tuple(float(v) for v in p32)!r}")
    print(f"_GELU_Q = {tuple(float(v) for v in q32)!r}")
    print(f"max |max(a, 0.35) (R(a) - Q(a))| in float64: {err64:.3g}")
    print(f"max |GELU - x Phi(x)| on [-9, 9], float32 without FMAs: {err32:.3g}")


if __name__ == "__main__":
    main()
