"""What the benchmark scripts share: model files, contenders in worker processes, statistics.

Not a benchmark itself; ``bench_model.py`` and ``bench_ops.py`` import it. Every contender runs in
its own worker process (``python benchmarks/harness.py worker SPEC``) with the thread count in
its environment (OMP_NUM_THREADS, NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS), so
that no contender's idle-spinning threads (OpenBLAS, OpenMP) steal cores from the next one; the
coordinator asks each in turn for a slice of timed forward passes, pausing between them.

Contenders: ``numba`` and ``numpy`` (convnext_np's backends), ``torch`` (transformers'
ConvNextForImageClassification, eager, ``inference_mode``), ``onnxruntime`` (that torch model
exported to ONNX, CPU provider, all graph optimisations), ``openvino`` (the same ONNX file,
compiled for each input shape, inference precision pinned to f32), ``floor`` (every GEMM of the
forward pass, ``np.matmul`` into preallocated outputs: the GEMM floor) and ``gemms`` (the same
GEMMs through the body of ``convnext_np.kernels.linear``, into the same preallocated outputs: the
Numba backend's own GEMM, alone). All load the same
realistic random weights, written once in Hugging Face layout.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = Path(tempfile.gettempdir()) / "convnext_np_bench"
CONTENDERS = ("numba", "numpy", "torch", "onnxruntime", "openvino", "floor", "gemms")
ONNX_CONTENDERS = ("onnxruntime", "openvino")  # read model.onnx
LABELS = {"numba": 'convnext_np backend="numba"', "numpy": 'convnext_np backend="numpy"',
          "torch": "PyTorch eager (transformers)", "onnxruntime": "ONNX Runtime",
          "openvino": "OpenVINO (f32)",
          "floor": "GEMM floor (NumPy sgemm)", "gemms": "the same GEMMs, convnext_np's kernel"}
SETTLE_S = 0.3  # pause before each slice: spinning threads of the previous contender go to sleep


def thread_env(threads: int, unset=(), **extra) -> dict:
    """The environment of a contender: this one, with the thread count set and ``unset`` removed."""
    env = {k: v for k, v in os.environ.items() if k != "CONVNEXT_NP_BACKEND" and k not in unset}
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --- model files ------------------------------------------------------------------------------------

def model_dir(variant: str, size: int, *, onnx: bool = False, workdir: Path = WORKDIR,
              model_type: str = "convnext") -> Path:
    """A Hugging Face directory with realistic random weights (seed 0), and model.onnx on request;
    ``model_type="convnextv2"``: the variant as ConvNeXt V2."""
    d = Path(workdir) / f"{variant}-{size}" if model_type == "convnext" else Path(workdir) / f"{variant}-{size}-v2"
    if not (d / "model.safetensors").is_file():
        import convnext_np as cnp
        from convnext_np import weights
        from convnext_np.testing import realistic_state_dict

        config = cnp.ConvNextConfig.from_variant(variant, image_size=size, model_type=model_type)
        hf = realistic_state_dict(weights.expected_shapes(config), seed=0)
        cnp.ConvNeXt(config, weights.to_params(hf, config, variant), backend="numpy").save_pretrained(d)
    if onnx and not (d / "model.onnx").is_file():
        export_onnx(d, size)
    return d


def export_onnx(d: Path, size: int) -> None:
    """Export transformers' model of ``d`` to ``d/model.onnx`` (dynamic batch), in a subprocess."""
    code = f"""
import warnings, torch
warnings.filterwarnings("ignore")
from transformers import ConvNextForImageClassification
m = ConvNextForImageClassification.from_pretrained({str(d)!r}).eval()
class Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__(); self.m = m
    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).logits
torch.onnx.export(Logits(m), (torch.zeros(1, 3, {size}, {size}),), {str(d / "model.onnx.tmp")!r},
                  input_names=["pixel_values"], output_names=["logits"], opset_version=17,
                  dynamic_axes={{"pixel_values": {{0: "batch"}}, "logits": {{0: "batch"}}}}, dynamo=False)
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    os.replace(d / "model.onnx.tmp", d / "model.onnx")


# --- contenders (these run inside the worker process) ------------------------------------------------

def gemm_shapes(config, size: int, batch: int) -> list:
    """(M, K, N) of every GEMM of one forward pass, in order: stem, stages (downsample, fc1, fc2), head."""
    shapes, side = [], size // 4
    dims = config.hidden_sizes
    shapes.append((batch * side * side, 16 * config.num_channels, dims[0]))
    for s, (depth, c) in enumerate(zip(config.depths, dims)):
        if s:
            side //= 2
            shapes.append((batch * side * side, 4 * dims[s - 1], c))
        m = batch * side * side
        shapes += [(m, c, 4 * c), (m, 4 * c, c)] * depth
    shapes.append((batch, dims[-1], config.num_labels))
    return shapes


def build(contender: str, d: Path, threads: int):
    """A function pixel_values (N, 3, H, W) float32 -> logits, for one contender."""
    import numpy as np

    if contender in ("numba", "numpy", "auto"):  # "auto": a start-up contender only
        import convnext_np as cnp

        model = cnp.from_pretrained(d, backend=contender)
        return lambda x: model(x).logits
    if contender == "torch":
        import torch
        from transformers import ConvNextForImageClassification

        torch.set_num_threads(threads)
        model = ConvNextForImageClassification.from_pretrained(d).eval()

        def run(x):
            with torch.inference_mode():
                return model(pixel_values=torch.from_numpy(x)).logits.numpy()
        return run
    if contender == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(d / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"pixel_values": x})[0]
    if contender == "openvino":  # the same ONNX file; compiled per input shape (static shapes)
        import openvino as ov

        core = ov.Core()
        onnx_model = core.read_model(str(d / "model.onnx"))
        settings = {"INFERENCE_PRECISION_HINT": "f32",  # no bf16 on CPUs that have it: fp32 like the rest
                    "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        compiled = {}

        def run(x):
            if x.shape not in compiled:
                onnx_model.reshape({"pixel_values": list(x.shape)})
                compiled[x.shape] = core.compile_model(onnx_model, "CPU", settings).create_infer_request()
            request = compiled[x.shape]
            request.infer({"pixel_values": x})
            return request.get_output_tensor(0).data
        return run
    if contender in ("floor", "gemms"):
        import convnext_np as cnp

        config = cnp.ConvNextConfig.from_json_file(d / "config.json")
        rng = np.random.default_rng(0)
        cache = {}
        if contender == "gemms":  # the Numba backend's own GEMM (kernels.linear), zero bias
            from convnext_np import kernels

        def run(x):
            key = x.shape
            if key not in cache:  # distinct weights per layer (as in the model), buffers per shape
                gemms = []
                for m, k, n in gemm_shapes(config, x.shape[2], x.shape[0]):
                    a = cache.setdefault(("a", m, k), rng.standard_normal((m, k), np.float32))
                    out = cache.setdefault(("c", m, n), np.empty((m, n), np.float32))
                    w = rng.standard_normal((k, n), np.float32) * k**-0.5
                    w.flags.writeable = False  # read-only, as a model's: kernels keep its packed panels
                    gemms.append((a, w, out, np.zeros(n, np.float32)))
                cache[key] = gemms
            if contender == "floor":
                for a, w, out, _ in cache[key]:
                    np.matmul(a, w, out=out)
            else:  # kernels.linear's body, into the same preallocated outputs
                for a, w, out, bias in cache[key]:
                    kernels._linear_into(a, w, bias, out)
        return run
    raise ValueError(f"unknown contender {contender!r}")


def pixels(batch: int, size: int):
    from convnext_np.testing import random_pixels

    return random_pixels((batch, 3, size, size), seed=0)


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def worker(spec: dict) -> None:
    """Serve timing requests on stdin/stdout (one JSON object per line)."""
    t_start = time.perf_counter()
    f = build(spec["contender"], Path(spec["dir"]), spec["threads"])
    inputs = {b: pixels(b, spec["size"]) for b in spec["batches"]}
    estimate = {}
    for b, x in inputs.items():  # warm up: at least 3 passes and 1 s
        t0, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t0 < 1.0:
            f(x)
            n += 1
        estimate[b] = (time.perf_counter() - t0) / n
    print(json.dumps({"ready": True, "estimate": estimate, "startup_s": time.perf_counter() - t_start}),
          flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        x = inputs[cmd["batch"]]
        f(x)  # untimed: the first pass after a pause pays for page faults and cold caches
        times, cpu = [], []
        for _ in range(cmd["iters"]):
            t0, c0 = time.perf_counter(), time.process_time()
            f(x)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(json.dumps({"times": times, "cpu": cpu}), flush=True)


def oneshot(spec: dict) -> None:
    """A fresh process: import, load, one forward pass on the batch; report times and peak memory."""
    t_import = time.perf_counter()
    if spec["contender"] in ("numba", "numpy", "auto"):
        import convnext_np  # noqa: F401
        import_s = time.perf_counter() - t_import
        numba_imported = "numba" in sys.modules
    else:
        import_s, numba_imported = None, None
    f = build(spec["contender"], Path(spec["dir"]), spec["threads"])
    loaded_kib = vm_kib("VmRSS")
    x = pixels(spec["batch"], spec["size"])
    t0, c0 = time.perf_counter(), time.process_time()
    f(x)
    first_s, first_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    layer = None
    if spec["contender"] == "numba":
        import numba

        layer = numba.threading_layer()
    print(json.dumps({"threading_layer": layer, "first_logits_at": time.time(), "import_s": import_s,
                      "numba_imported_by_import": numba_imported, "first_forward_s": first_s,
                      "first_forward_cpu_s": first_cpu_s,
                      "rss_loaded_kib": loaded_kib, "peak_kib": vm_kib("VmHWM")}), flush=True)


# --- the coordinator side ------------------------------------------------------------------------------

class Worker:
    def __init__(self, contender: str, d: Path, size: int, batches, threads: int, unset=()):
        spec = {"contender": contender, "dir": str(d), "size": size, "batches": list(batches),
                "threads": threads}
        self.contender = contender
        self.proc = subprocess.Popen([sys.executable, __file__, "worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=thread_env(threads, unset), cwd=ROOT)
        ready = self._read()
        self.estimate = {int(k): v for k, v in ready["estimate"].items()}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.contender} died (exit {self.proc.wait()})")
        return json.loads(line)

    def time(self, batch: int, iters: int) -> list:
        """Wall-clock seconds of ``iters`` passes; their CPU seconds (all threads) go to ``last_cpu``."""
        self.proc.stdin.write(json.dumps({"op": "time", "batch": batch, "iters": iters}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        self.last_cpu = reply["cpu"]
        return reply["times"]

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def interleaved(contenders, d: Path, size: int, batches, threads: int, rounds: int,
                slice_s: float = 0.6, log=print, unset=()) -> dict:
    """{contender: {batch: [seconds per forward pass]}}, measured round-robin, order rotating.

    Each slice: a pause, one untimed pass, then ~``slice_s`` of timed passes (at least one).
    """
    workers = []
    try:
        for c in contenders:  # started one by one, so each warms up alone
            log(f"  starting {c} ...")
            workers.append(Worker(c, d, size, batches, threads, unset))
        times = {w.contender: {b: [] for b in batches} for w in workers}
        for r in range(rounds):
            for b in batches:
                for w in workers[r % len(workers):] + workers[:r % len(workers)]:
                    time.sleep(SETTLE_S)
                    iters = max(1, round(slice_s / max(w.estimate[b], 1e-6)))
                    times[w.contender][b] += w.time(b, iters)
            log(f"  round {r + 1}/{rounds} done")
        return times
    finally:
        for w in workers:
            w.close()


def byte_compile() -> None:
    """Write convnext_np's bytecode now, as ``pip install`` does, so that no start-up measured after
    this compiles the package's source (each process would, from a checkout, where
    PYTHONDONTWRITEBYTECODE is set: 0.03-0.06 s of ``import convnext_np`` on a 2-core AMD EPYC)."""
    import compileall

    compileall.compile_dir(str(ROOT / "convnext_np"), quiet=1)


def run_oneshot(contender: str, d: Path, size: int, batch: int, threads: int, **env) -> dict:
    """Launch a fresh process; its result plus ``launch_to_logits_s`` (interpreter start included)."""
    spec = {"contender": contender, "dir": str(d), "size": size, "batch": batch, "threads": threads}
    launched = time.time()
    out = subprocess.run([sys.executable, __file__, "oneshot", json.dumps(spec)], capture_output=True,
                         text=True, env=thread_env(threads, **env), cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{contender} oneshot failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["launch_to_logits_s"] = result["first_logits_at"] - launched
    return result


def stats(seconds, per: int = 1) -> dict:
    ms = [1e3 * s / per for s in seconds]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def fmt(s: dict) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


# --- machine facts ---------------------------------------------------------------------------------------

def openblas_cores() -> list:
    """The kernel family ("SkylakeX", "Haswell", ...) that NumPy's and scipy's OpenBLAS run."""
    import ctypes

    import numpy as np

    found = []
    numpy_libs = Path(np.__file__).parent.parent / "numpy.libs"
    for lib_path, names in ((numpy_libs, ("scipy_openblas_get_corename64_", "openblas_get_corename64_",
                                          "openblas_get_corename")),
                            (None, ("scipy_openblas_get_corename", "openblas_get_corename"))):
        try:
            if lib_path is None:
                import scipy.linalg.cython_blas as cython_blas

                lib = ctypes.CDLL(cython_blas.__file__)
            else:
                lib = ctypes.CDLL(str(next(lib_path.glob("*openblas*.so*"))))
            fn = next(getattr(lib, n) for n in names if hasattr(lib, n))
            fn.restype = ctypes.c_char_p
            found.append(fn().decode())
        except Exception:  # noqa: BLE001 (not OpenBLAS, or not found)
            found.append("unknown")
    return found


def fma_peak(threads: int) -> float | None:
    """This CPU's float32 FMA peak in GFLOP/s on ``threads`` threads (``fma_peak.c``); None
    where it cannot be built (no C compiler, no FMA)."""
    exe = WORKDIR / "fma_peak"
    if not exe.is_file():
        WORKDIR.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(["cc", "-O2", "-march=native", "-pthread", str(ROOT / "benchmarks" / "fma_peak.c"),
                                "-o", str(exe)], capture_output=True)
        if built.returncode:
            return None
    runs = [json.loads(subprocess.run([str(exe), str(threads)], capture_output=True, text=True,
                                      check=True).stdout)["gflops"] for _ in range(3)]
    return max(runs)  # the peak: the run least disturbed by the rest of the machine


def machine() -> dict:
    import numpy as np

    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count(), "numpy": np.__version__}
    try:
        info = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        facts["cpu"] = (f"{fields.get('model name')} (family {fields.get('cpu family')}, model "
                        f"{fields.get('model')}), {fields.get('cpu MHz')} MHz nominal")
    except (OSError, StopIteration):
        facts["cpu"] = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key = line.split(":")[0].strip()
            if key in ("L1d cache", "L2 cache", "L3 cache", "Thread(s) per core", "Flags"):
                value = line.split(":", 1)[1].strip()
                if key == "Flags":
                    value = " ".join(f for f in value.split() if f.startswith("avx512f") or f in ("avx2", "fma"))
                facts[key] = value
    except OSError:
        pass
    try:
        facts["memory"] = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    except OSError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        facts["numpy BLAS"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 (older NumPy)
        pass
    facts["OpenBLAS kernels (NumPy's, scipy's)"] = ", ".join(openblas_cores())
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name in os.environ:
            facts[f"environment {name}"] = os.environ[name]
    for mod in ("numba", "llvmlite", "scipy", "torch", "transformers", "onnxruntime", "openvino"):
        try:
            facts[mod] = __import__(mod).__version__
        except ImportError:
            facts[mod] = "not installed"
    try:
        import llvmlite.binding as ll

        facts["LLVM target"] = f"{ll.get_host_cpu_name()} (LLVM {'.'.join(map(str, ll.llvm_version_info))})"
    except Exception:  # noqa: BLE001
        pass
    source = plan_source()
    if source is not None:
        from convnext_np import kernels

        p = kernels.PLAN
        facts["numba GEMM plan"] = (f"{p.mr} x {p.nr} micro-kernel, {p.lanes} lanes, MC {p.mc}, "
                                    f"KC {p.kc} ({PLAN_SOURCES[source]})")
    return facts


PLAN_SOURCES = {"chosen": "chosen on this machine by python -m convnext_np.warmup",
                "environment": "set by CONVNEXT_NP_GEMM_PLAN",
                "default": "the default: none chosen here yet"}


def plan_source() -> str | None:
    """Where the numba backend's GEMM plan comes from, a key of ``PLAN_SOURCES``; None where
    Numba does not import."""
    try:
        from convnext_np import kernels
    except (ImportError, OSError):  # no Numba, or a broken llvmlite; a bad CONVNEXT_NP_GEMM_PLAN raises
        return None
    if os.environ.get(kernels.PLAN_ENV):
        return "environment"
    return "chosen" if kernels.recorded_plan() == kernels.PLAN else "default"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    {"worker": worker, "oneshot": oneshot}[mode](spec)
