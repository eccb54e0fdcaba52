"""Compiling the Numba kernels once per machine, without making a call wait for it unannounced.

The numba backend's kernels (:mod:`convnext_np.kernels`) are compiled by Numba and kept in its
on-disk cache (``cache=True``): in ``__pycache__`` beside ``kernels.py``, or, where the package
directory is not writable (site-packages owned by another user), in the user-wide cache
directory that Numba picks; ``NUMBA_CACHE_DIR`` overrides both. A cold compile takes tens of
seconds (docs/performance.md), so:

- a model loaded with ``backend="auto"`` serves its calls with the NumPy backend while a detached
  process (``python -m convnext_np.warmup``) compiles every kernel into the cache; the first call
  after that process is done runs on Numba. The process outlives the one that started it (a
  command-line run of one image still leaves the machine warm).
- a model whose backend is ``"numba"`` by name compiles every kernel in its first call.

Either way the user is told, once per process, through the ``convnext_np`` logger (WARNING, so
that Python's default handler prints it on stderr), with an estimate of how long it takes.

Every compile on a machine runs under one file lock in the cache directory, so Spark executors
and parallel workers compile once, and no two processes rewrite Numba's cache index at once
(each rewrites the whole index, so concurrent writers can drop each other's entries). The cache
counts as warm when the marker that a finished compile writes there matches this ``kernels.py``,
Numba, Python and CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("convnext_np")

MARKER = "convnext_np-warm.json"
LOCK = "convnext_np-warmup.lock"
# Said before the first compile on a machine, when there is no measurement yet: the range of
# the cold compiles measured so far (docs/performance.md).
FIRST_ESTIMATE = "20-80 s"

_ready = False  # the marker matched, or this process is the one compiling
_announced = set()


def _cache_dir() -> Path | None:
    """Where Numba caches ``kernels.py``'s functions; None where nothing is compiled (JIT off)."""
    import numba

    if numba.config.DISABLE_JIT:
        return None
    from . import kernels

    # Any of the module's cached functions: Numba's cache locator chose their directory when the
    # function was decorated.
    return Path(kernels._global_avg_pool._cache._cache_path)


def _key() -> dict:
    """What the compiled code depends on: the source of kernels.py, Numba, Python and the CPU."""
    import llvmlite.binding
    import numba

    from . import kernels

    stat = os.stat(kernels.__file__)
    return {"kernels": [stat.st_mtime_ns, stat.st_size], "numba": numba.__version__,
            "python": sys.version.split()[0], "cpu": llvmlite.binding.get_host_cpu_name(),
            "cpu_name_override": numba.config.CPU_NAME}


def _read_marker(directory: Path) -> dict:
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ready() -> bool:
    """True when the kernels run without compiling: in Numba's cache for this machine (or nothing
    compiles, the JIT being off), or being compiled by this very process."""
    global _ready
    if not _ready:
        directory = _cache_dir()
        _ready = directory is None or _read_marker(directory).get("key") == _key()
    return _ready


def estimate() -> str:
    """How long a compile takes here: the last one measured on this machine, else the usual range."""
    directory = _cache_dir()
    seconds = _read_marker(directory).get("seconds") if directory is not None else None
    return f"about {seconds:.0f} s" if isinstance(seconds, (int, float)) else FIRST_ESTIMATE


def _announce(kind: str, message: str) -> bool:
    """Log ``message`` the first time ``kind`` is announced in this process; whether it was."""
    if kind in _announced:
        return False
    _announced.add(kind)
    log.warning(message)
    return True


def start_background() -> None:
    """Start the detached warm-up process (once per process) and say that NumPy serves meanwhile."""
    if not _announce("background", f"compiling the Numba kernels in the background ({estimate()}, "
                                   "once per machine); the NumPy backend serves until they are ready"):
        return
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-m", "convnext_np.warmup"], env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def compile_here() -> None:
    """Compile every kernel in this process (waiting first for a compile running elsewhere)."""
    _announce("foreground", f"compiling the Numba kernels before the first call ({estimate()}, once "
                            "per machine; python -m convnext_np.warmup does it ahead of time)")
    run(wait=True)


@contextlib.contextmanager
def _exclusive(directory: Path, wait: bool):
    """Yield True while this process holds the machine's compile lock; False (at once) when
    another process holds it and ``wait`` is false."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): compiling twice is only slower
        yield True
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sides(threads: int) -> tuple:
    """Input sides that take both code paths of every layer: few rows per thread (output columns
    split among the threads) and many (row tiles), see ``kernels._is_tall``."""
    from . import kernels

    rows = threads * kernels.TALL_MIN_ROWS  # stem output rows needed for row tiles
    side = 4 * int(np.ceil(np.sqrt(rows)))  # the stem divides each side by 4
    return 32, -(-side // 32) * 32


# One small model of each structure whose forward pass calls the kernels its own way: config
# fields (and the Backbone's out_features) over a V1 model with a 3-class head.
STRUCTURES = (
    {},
    {"model_type": "convnextv2"},  # GRN blocks, no layer scale
    {"num_labels": 0},
    {"head_norm_first": True},  # timm's _hnf
    {"head_hidden_size": 32},  # timm's MLP head (convnext_large_mlp)
    {"stem_type": "overlap_act", "norm_layer": "simplenorm"},  # timm's zepto_rms_ols
    {"model_type": "dinov3_convnext", "num_labels": 0},  # the token sequence
    {"out_features": ("stem", "stage1", "stage2", "stage3", "stage4")},  # Backbone feature maps
)


def _model(structure: dict):
    from . import backbone, weights
    from .config import ConvNextConfig
    from .model import ConvNeXt
    from .testing import realistic_state_dict

    fields = dict(structure)
    out_features = fields.pop("out_features", None)
    num_labels = fields.pop("num_labels", 3)
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 40, 48],
                            id2label={i: str(i) for i in range(num_labels)}, **fields)
    params = weights.to_params(realistic_state_dict(weights.expected_shapes(config)), config, "warm-up")
    if out_features:
        params["backbone_norms"] = backbone.norm_params(out_features, {}, config.hidden_sizes)
    return ConvNeXt(config, params, backend="numba", out_features=out_features)


def compile_all() -> None:
    """Compile (or load from the cache) every kernel the forward pass uses, by running it: a small
    random model of each structure, on inputs that take every code path."""
    import numba

    from .testing import random_pixels

    sides = _sides(numba.config.NUMBA_NUM_THREADS)
    for structure in STRUCTURES:
        model = _model(structure)
        for side in sides:
            model(random_pixels((1, 3, side, side)))


def run(wait: bool = False) -> float | None:
    """Warm the cache under the machine's compile lock, unless it is warm by then; the seconds it
    took, or None. Without ``wait``, return at once when another process holds the lock."""
    global _ready
    directory = _cache_dir()
    if directory is None:
        return None
    with _exclusive(directory, wait) as mine:
        if not mine or ready():
            return None
        _ready = True  # the model calls below run on Numba, compiling
        started = time.perf_counter()
        try:
            compile_all()
        except BaseException:
            _ready = False
            raise
        seconds = time.perf_counter() - started
        tmp = directory / f".{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": _key(), "seconds": seconds}), encoding="utf-8")
        os.replace(tmp, directory / MARKER)
        return seconds


def main() -> None:
    took = run()
    print("the Numba kernels were compiled already, or another process is compiling them" if took is None
          else f"compiled the Numba kernels in {took:.1f} s")


if __name__ == "__main__":
    # Run as the package's module, not as a second copy of it named __main__: the model calls in
    # compile_all consult convnext_np.warmup's state.
    from convnext_np import warmup

    warmup.main()
