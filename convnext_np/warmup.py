"""Compiling the Numba kernels once per machine, without making a call wait for it unannounced.

The numba backend's kernels (:mod:`convnext_np.kernels`) are compiled by Numba on first use and
kept in Numba's on-disk cache (``cache=True``): in ``__pycache__`` beside ``kernels.py``, or, where
the package directory is not writable (site-packages owned by another user), in the user-wide
cache directory that Numba picks; ``NUMBA_CACHE_DIR`` overrides both. A cold compile takes tens
of seconds (docs/performance.md), so:

- a model loaded with ``backend="auto"`` serves its calls with the NumPy backend while a detached
  process (``python -m convnext_np.warmup``) compiles every kernel into the cache; the first call
  after that process is done runs on Numba. The process outlives the one that started it (a
  command-line run of one image still leaves the machine warm), and a file lock in the cache
  directory lets only one run per machine at a time (Spark executors, parallel workers).
- ``backend="numba"`` asked for by name compiles in the calling process, on first use, as Numba
  does, after saying so.

Either way the user is told, once per process, through the ``convnext_np`` logger (WARNING, so
that Python's default handler prints it on stderr), with an estimate of how long it takes.

The cache counts as warm when the marker that a finished warm-up writes sits in the directory of
Numba's cache files for ``kernels.py``, made for the same ``kernels.py``, Numba and CPU.
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

_ready = False
_announced = set()


def _cache_dir() -> Path | None:
    """Where Numba caches ``kernels.py``'s functions; None where nothing is compiled (JIT off)."""
    import numba

    if numba.config.DISABLE_JIT:
        return None
    from . import kernels

    # Any of the module's cached functions: Numba's cache locator has chosen their directory
    # when the function was decorated.
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
    """True when every kernel is in Numba's cache for this machine (or nothing needs compiling)."""
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


def _announce(kind: str, message: str) -> None:
    if kind not in _announced:
        _announced.add(kind)
        log.warning(message)


def announce_foreground() -> None:
    """Say that the next call compiles the kernels in this process."""
    _announce("foreground", f"compiling the Numba kernels on first use ({estimate()}, once per "
                            "machine; python -m convnext_np.warmup does it ahead of time)")


def start_background() -> None:
    """Start the detached warm-up process (once per process) and say that NumPy serves meanwhile."""
    if "background" in _announced:
        return
    _announce("background", f"compiling the Numba kernels in the background ({estimate()}, once "
                            "per machine); the NumPy backend serves until they are ready")
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-m", "convnext_np.warmup"], env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def _exclusive(directory: Path):
    """Yield True when this process holds the machine's warm-up lock, False when another does."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): compiling twice is only slower
        yield True
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sides(threads: int) -> tuple:
    """Input sides that take both code paths of every layer: few rows per thread (columns split
    among threads) and many (rows split), see ``kernels._is_tall``."""
    from . import kernels

    rows = threads * kernels.TALL_MIN_ROWS  # stem output rows needed for the row-split path
    side = 4 * int(np.ceil(np.sqrt(rows)))  # the stem divides each side by 4
    return 32, -(-side // 32) * 32


def compile_all() -> None:
    """Compile (or load from the cache) every kernel the forward pass uses, by running it: a small
    random model, with and without a head, on inputs that take every code path."""
    import numba

    from . import weights
    from .config import ConvNextConfig
    from .model import ConvNeXt
    from .testing import random_pixels, realistic_state_dict

    for num_labels in (3, 0):
        config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 40, 48],
                                id2label={i: str(i) for i in range(num_labels)})
        hf = realistic_state_dict(weights.expected_shapes(config))
        model = ConvNeXt(config, weights.to_params(hf, config, "warm-up"), backend="numba")
        for side in _sides(numba.config.NUMBA_NUM_THREADS):
            model(random_pixels((1, 3, side, side)))


def run() -> float | None:
    """Warm the cache unless it is warm or another process is warming it; the seconds it took."""
    directory = _cache_dir()
    if directory is None:
        return None
    with _exclusive(directory) as mine:
        if not mine or ready():
            return None
        _announced.add("foreground")  # this process is the compile that message would announce
        started = time.perf_counter()
        compile_all()
        seconds = time.perf_counter() - started
        tmp = directory / f".{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": _key(), "seconds": seconds}), encoding="utf-8")
        os.replace(tmp, directory / MARKER)
        return seconds


if __name__ == "__main__":
    took = run()
    print("the Numba kernels were warm already, or another process is warming them" if took is None
          else f"compiled the Numba kernels in {took:.1f} s")
