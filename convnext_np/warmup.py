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
Numba, Python, CPU and GEMM plan.

An explicit ``python -m convnext_np.warmup`` also chooses the machine's GEMM plan, once:
:func:`tune` times the candidate blockings of :func:`convnext_np.kernels.candidate_plans` on
ConvNeXt-T's GEMMs and records the fastest beside Numba's cache (``kernels.PLAN_FILE``), which
``kernels.py`` reads when it is imported (docs/kernels.md, "Plans"). The background warm-up of a
model's first call does not: it compiles the plan that the calling process runs, so that the
process's next calls can use what it compiled.
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

from . import backbone, model, weights
from .files import atomic_write
from .config import ConvNextConfig
from .testing import random_pixels, realistic_state_dict

log = logging.getLogger("convnext_np")

MARKER = "convnext_np-warm.json"
LOCK = "convnext_np-warmup.lock"
# Said before the first compile on a machine, when there is no measurement yet: the range of
# the cold compiles measured so far (docs/performance.md).
FIRST_ESTIMATE = "20-80 s"

_ready = False  # the marker matched
_announced = set()


def _cache_dir() -> Path | None:
    """Where Numba caches ``kernels.py``'s functions; None where nothing is compiled (JIT off)."""
    import numba

    if numba.config.DISABLE_JIT:
        return None
    from . import kernels

    return kernels.cache_dir()


def _key(plan=None) -> dict:
    """What the compiled code depends on: the source of kernels.py, Numba, Python, the CPU, and
    the GEMM plan (this process's unless given)."""
    from . import kernels

    return {**kernels.machine_key(), "plan": list(kernels.PLAN if plan is None else plan)}


def _read_marker(directory: Path) -> dict:
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ready() -> bool:
    """True when the kernels run without compiling: in Numba's cache for this machine (or nothing
    compiles, the JIT being off)."""
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


def _child_env(**extra) -> dict:
    """This process's environment for a ``python -m convnext_np.warmup`` child, which must import
    this very copy of the package."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def start_background() -> None:
    """Start the detached warm-up process (once per process) and say that NumPy serves meanwhile.

    It compiles the GEMM plan this process runs (``--no-tune``), so that the marker it writes is
    this process's and its next calls run on Numba; choosing a plan is left to an explicit
    ``python -m convnext_np.warmup``, whose plan the processes started after it take up."""
    if not _announce("background", f"compiling the Numba kernels in the background ({estimate()}, "
                                   "once per machine); the NumPy backend serves until they are ready"):
        return
    from . import kernels

    env = _child_env(**{kernels.PLAN_ENV: ",".join(map(str, kernels.PLAN))})
    subprocess.Popen([sys.executable, "-m", "convnext_np.warmup", "--no-tune"], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def compile_here() -> None:
    """Compile every kernel in this process (waiting first for a compile running elsewhere)."""
    _announce("foreground", f"compiling the Numba kernels before the first call ({estimate()}, once "
                            "per machine; python -m convnext_np.warmup does it ahead of time)")
    run(wait=True)


def serving(name: str, by_name: bool) -> str:
    """The backend that runs a call of a model whose backend is ``name``.

    The numba backend runs once its kernels are in Numba's cache. Before that, a model whose
    backend was chosen by name compiles them in this call (after saying so); one that left it to
    ``"auto"`` runs on NumPy while they compile in the background.
    """
    if name != "numba" or ready():
        return name
    if by_name:
        compile_here()
        return name
    start_background()
    return "numpy"


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
    """(config, parameters, out_features) of a small random model of ``structure``."""
    fields = dict(structure)
    out_features = fields.pop("out_features", None)
    num_labels = fields.pop("num_labels", 3)
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 40, 48],
                            id2label={i: str(i) for i in range(num_labels)}, **fields)
    params = weights.to_params(realistic_state_dict(weights.expected_shapes(config)), config, "warm-up")
    if out_features:
        params["backbone_norms"] = backbone.norm_params(out_features, {}, config.hidden_sizes)
    return config, weights.read_only(params), out_features


def compile_all() -> None:
    """Compile (or load from the cache) every kernel the forward pass uses, by running it: a small
    random model of each structure, on inputs that take every code path."""
    import numba

    from . import kernels

    sides = _sides(numba.config.NUMBA_NUM_THREADS)
    for structure in STRUCTURES:
        config, params, out_features = _model(structure)
        for side in sides:
            model.run(params, config, random_pixels((1, 3, side, side)), ops=kernels,
                      out_features=out_features)


# --- Choosing the GEMM plan (kernels.Plan) for this machine ---------------------------------------

# ConvNeXt-T's stage widths, and each stage's side at 224 x 224 input: the shapes the plans are
# timed on, fc1 (pixels, C) @ (C, 4C) and fc2 (pixels, 4C) @ (4C, C) of every stage, 93% of its
# multiply-adds.
TUNE_WIDTHS, TUNE_SIDES = (96, 192, 384, 768), (56, 28, 14, 7)
TUNE_BATCHES = (1, 8)
TUNE_ROUNDS = 5


def gemm_shapes(batch: int) -> list:
    """(M, K, N) of the pointwise GEMMs of one ConvNeXt-T block per stage at 224, batch ``batch``."""
    shapes = []
    for c, side in zip(TUNE_WIDTHS, TUNE_SIDES):
        m = batch * side * side
        shapes += [(m, c, 4 * c), (m, 4 * c, c)]
    return shapes


def _gemm_worker(contender: str) -> None:
    """Serve GEMM timings on stdin/stdout, one JSON object a line: ``contender`` is a plan
    (``"lanes,mr,nr,mc,kc"``, which kernels.py takes from its environment variable, see
    time_gemms) running the numba backend's GEMM (``kernels._linear_into``), or ``"numpy"``
    (``np.matmul``, for benchmarks/bench_gemm.py). Replies: seconds per GEMM, in
    ``gemm_shapes`` order, for each batch."""
    rng = np.random.default_rng(0)
    weights = {}  # one block's fc1 and fc2 per stage, for both batch sizes, as a model's
    for c in TUNE_WIDTHS:
        for k, n in ((c, 4 * c), (4 * c, c)):
            w = rng.standard_normal((k, n), np.float32) * np.float32(k ** -0.5)
            w.flags.writeable = False  # read-only, as a model's: its panels are packed once
            weights[k, n] = w, np.zeros(n, np.float32)
    # One buffer each for a stage's input, its fc1 output (fc2's input) and fc2's output, sized for
    # the largest and shared by all shapes: 58 MB, not the 180 MB of a pair of arrays per GEMM.
    size = max(m * k for batch in TUNE_BATCHES for m, k, _ in gemm_shapes(batch))
    x_buf = rng.standard_normal(size // 4, np.float32)
    h_buf, y_buf = np.empty(size, np.float32), np.empty(size // 4, np.float32)
    cases = {}
    for batch in TUNE_BATCHES:
        cases[batch] = []
        for c, side in zip(TUNE_WIDTHS, TUNE_SIDES):
            m = batch * side * side
            x, h, y = x_buf[:m * c].reshape(m, c), h_buf[:m * 4 * c].reshape(m, 4 * c), y_buf[:m * c].reshape(m, c)
            cases[batch] += [(x, *weights[c, 4 * c], h), (h, *weights[4 * c, c], y)]  # gemm_shapes' order
    if contender == "numpy":
        def gemm(a, w, b, out):
            np.matmul(a, w, out=out)
    else:
        from . import kernels

        assert str(kernels.parse_plan(contender)) == str(kernels.PLAN), (contender, kernels.PLAN)
        gemm = kernels._linear_into
    for batch in TUNE_BATCHES:  # compiles (or loads), packs, and touches every buffer
        for case in cases[batch]:
            gemm(*case)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") != "time":
            break
        reply = {}
        for batch in TUNE_BATCHES:
            reply[batch] = []
            for case in cases[batch]:
                gemm(*case)  # untimed: the first call after a pause meets cold caches
                t0 = time.perf_counter()
                for _ in range(request["reps"]):
                    gemm(*case)
                reply[batch].append((time.perf_counter() - t0) / request["reps"])
        print(json.dumps(reply), flush=True)


def time_gemms(contenders, rounds: int = TUNE_ROUNDS, reps: int = 2, pause_s: float = 0.2) -> dict:
    """{contender: {batch: [[seconds of each GEMM] for each round]}}: each contender (a plan string
    or "numpy") in a worker process of its own (threads as this process's environment says),
    started one by one (each compiles alone), then timed round-robin, order rotating, so that
    every contender sees the same machine."""
    from . import kernels

    workers = {}
    try:
        for contender in contenders:
            env = _child_env(**({} if contender == "numpy" else {kernels.PLAN_ENV: contender}))
            proc = subprocess.Popen([sys.executable, "-m", "convnext_np.warmup", "--gemm-worker", contender],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            if not proc.stdout.readline():
                raise RuntimeError(f"the GEMM worker for {contender} failed (exit {proc.wait()})")
            workers[contender] = proc
        times = {c: {b: [] for b in TUNE_BATCHES} for c in contenders}
        order = list(contenders)
        for r in range(rounds):
            for contender in order[r % len(order):] + order[:r % len(order)]:
                time.sleep(pause_s)
                proc = workers[contender]
                proc.stdin.write(json.dumps({"op": "time", "reps": reps}) + "\n")
                proc.stdin.flush()
                for batch, seconds in json.loads(proc.stdout.readline()).items():
                    times[contender][int(batch)].append(seconds)
        return times
    finally:
        for proc in workers.values():
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait(timeout=60)


def plan_score(times: dict) -> float:
    """Seconds per image over the tuning shapes: each GEMM's fastest round, summed, per batch, and
    summed over the batches. The fastest, not the median: on a machine shared with other work,
    the others' load only ever adds time (the median of a plan's rounds swung by 2x between runs
    on a shared 2-core machine, its minimum by far less)."""
    return sum(sum(min(per) for per in zip(*rounds)) / batch for batch, rounds in times.items())


def tune() -> tuple:
    """Time every candidate plan of this CPU (kernels.candidate_plans) on ConvNeXt-T's GEMMs and
    record the fastest in the cache directory (kernels.PLAN_FILE), for kernels.py to use from the
    next import on; the winner and the scores."""
    from . import kernels

    plans = kernels.candidate_plans()
    names = [",".join(map(str, plan)) for plan in plans]
    times = time_gemms(names)
    scores = {name: plan_score(times[name]) for name in names}
    best = plans[names.index(min(names, key=scores.get))]
    record = {"key": kernels.machine_key(), "plan": list(best),
              "ms_per_image": {n: 1e3 * v for n, v in scores.items()}}
    _write_json(_cache_dir() / kernels.PLAN_FILE, record)
    return best, scores


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data), encoding="utf-8"))


def _needs_tuning() -> bool:
    from . import kernels

    return not os.environ.get(kernels.PLAN_ENV) and kernels.recorded_plan() is None


def run(wait: bool = False, tune_plan: bool = False) -> float | None:
    """Warm the cache under the machine's compile lock, unless it is warm by then; the seconds it
    took, or None. Without ``wait``, return at once when another process holds the lock.

    With ``tune_plan``, and no plan recorded for this machine yet, first choose the GEMM plan
    (:func:`tune`), then compile the kernels for it (in a fresh process when it is not the plan
    this process imported kernels.py with).
    """
    directory = _cache_dir()
    if directory is None:
        return None
    from . import kernels

    with _exclusive(directory, wait) as mine:
        tuning = mine and tune_plan and _needs_tuning()
        if not mine or (ready() and not tuning):
            return None
        started = time.perf_counter()
        plan = kernels.PLAN
        if tuning:
            try:
                plan = tune()[0]
            except Exception as error:  # noqa: BLE001 (a worker died, say): compile the plan in use
                log.warning("choosing the GEMM plan failed (%s); compiling the Numba kernels for %s",
                            error, plan)
        if plan == kernels.PLAN:
            compile_all()
        else:
            subprocess.run([sys.executable, "-m", "convnext_np.warmup", "--compile-only"], check=True,
                           env=_child_env())
        seconds = time.perf_counter() - started
        _write_json(directory / MARKER, {"key": _key(plan), "seconds": seconds})
        return seconds


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--gemm-worker"]:
        _gemm_worker(argv[1])
        return
    if argv[:1] == ["--compile-only"]:  # run() holds the lock
        compile_all()
        return
    tune_plan = argv[:1] != ["--no-tune"]  # the background warm-up of a model's first call
    took = run(tune_plan=tune_plan)
    print("the Numba kernels were compiled already, or another process is compiling them" if took is None
          else f"{'chose the GEMM plan and ' if tune_plan else ''}compiled the Numba kernels in {took:.1f} s")


if __name__ == "__main__":
    main()
