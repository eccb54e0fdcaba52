"""Which implementation of :mod:`convnext_np.ops` runs the forward pass.

A backend is a module with the functions of :mod:`convnext_np.ops` (and optionally a fused
``block`` with the signature of :func:`convnext_np.model.block`). They are imported on first use,
so ``import convnext_np`` imports no Numba and compiles nothing. ``"auto"`` takes the first of
``PREFERENCE`` that imports (Numba missing or broken: NumPy); the ``CONVNEXT_NP_BACKEND``
environment variable sets what ``"auto"`` means.

The numba backend compiles its kernels once per machine; :func:`convnext_np.warmup.serving` says
which backend runs a call until then.
"""

import importlib
import os
import threading

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


_preparing = []


def prepare(name: str = "auto") -> None:
    """Start making the numba backend ready in a background thread, when ``name`` may resolve to
    it; return at once.

    A process's first use of Numba costs about 0.6 s before any kernel runs: importing Numba, and
    initialising its compiler's registries (:func:`convnext_np.kernels.initialise`). A loader that
    calls this before reading the weights overlaps the two. Nothing here compiles, and a failure
    is silent: resolving the backend, later, imports it again and reports it (or picks NumPy).
    """
    if name == "auto":
        name = os.environ.get("CONVNEXT_NP_BACKEND", "auto")
    if name not in ("auto", "numba") or _preparing:
        return

    def initialise():
        try:
            get("numba").initialise()
        except Exception:  # noqa: BLE001 (Numba missing or broken: resolve() deals with it)
            pass

    thread = threading.Thread(target=initialise, name="convnext_np-prepare", daemon=True)
    _preparing.append(thread)
    thread.start()


def get(name: str):
    """The ops module of a concrete backend."""
    return importlib.import_module(BACKENDS[name])


def chosen_by_name(name: str) -> bool:
    """Whether ``name`` (as given to a model) names a backend, directly or through the environment,
    rather than leaving the choice to ``"auto"``."""
    return name != "auto" or os.environ.get("CONVNEXT_NP_BACKEND", "auto") != "auto"
