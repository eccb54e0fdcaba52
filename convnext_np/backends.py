"""Which implementation of :mod:`convnext_np.ops` runs the forward pass.

A backend is a module with the functions of :mod:`convnext_np.ops` (and optionally a fused
``block`` with the signature of :func:`convnext_np.model.block`). They are imported on first use,
so ``import convnext_np`` imports no Numba and compiles nothing. ``"auto"`` takes the first of
``PREFERENCE`` that imports (Numba missing or broken: NumPy); the ``CONVNEXT_NP_BACKEND``
environment variable sets what ``"auto"`` means.
"""

import importlib
import os

BACKENDS = {"numba": "convnext_np.kernels", "numpy": "convnext_np.ops"}
PREFERENCE = ("numba", "numpy")


def resolve(name: str = "auto") -> str:
    """The concrete backend name for ``name`` (``"auto"`` or a key of ``BACKENDS``)."""
    if name == "auto":
        name = os.environ.get("CONVNEXT_NP_BACKEND", "auto")
    if name == "auto":
        for candidate in PREFERENCE:
            try:
                get(candidate)
            except Exception:  # not installed, or installed but broken (a bad llvmlite, say)
                continue
            return candidate
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {sorted(BACKENDS)}")
    get(name)
    return name


def get(name: str):
    """The ops module of a concrete backend."""
    return importlib.import_module(BACKENDS[name])
