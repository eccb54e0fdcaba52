"""The Numba compile: never silent, never in the way of ``backend="auto"``, once per machine."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

from convnext_np import backends, warmup
from tests.conftest import FIXTURES, ROOT, REFERENCE

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="nothing compiles without the JIT")
from convnext_np import kernels  # noqa: E402


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "CONVNEXT_NP_BACKEND"}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


# What a fresh process reports: how its first call was served, against the NumPy backend.
FIRST_CALL = f"""
    import json, numpy as np, numba
    import convnext_np as cnp
    from convnext_np import kernels
    from convnext_np.testing import random_pixels
    x = random_pixels((1, 3, 64, 96), seed=1)
    model = cnp.from_pretrained({str(FIXTURES / "hf-safetensors")!r})
    logits = model(x).logits
    numpy_logits = cnp.from_pretrained({str(FIXTURES / "hf-safetensors")!r}, backend="numpy")(x).logits
    dispatchers = [f for f in vars(kernels).values() if isinstance(f, numba.core.registry.CPUDispatcher)]
    print(json.dumps({{"backend": model.backend, "same_as_numpy": bool(np.array_equal(logits, numpy_logits)),
                      "compiled": sum(sum(f.stats.cache_misses.values()) for f in dispatchers),
                      "loaded": sum(sum(f.stats.cache_hits.values()) for f in dispatchers)}}))
"""

# After the warm-up: the full-size model at batch 1 and 8, and a model of every structure of the
# family (the committed fixtures), load every kernel and compile none.
FULL_SIZE = f"""
    import json, numba
    from pathlib import Path
    import convnext_np as cnp
    from convnext_np import kernels, weights
    from convnext_np.testing import random_pixels, realistic_state_dict
    meta = json.load(open({str(REFERENCE / "tiny-hf.json")!r}))
    config = cnp.ConvNextConfig.from_variant("tiny")
    model = cnp.ConvNeXt(config, weights.to_params(realistic_state_dict(meta["tensors"], 0), config, "tiny"),
                         backend="numba")
    for batch in (1, 8):
        model(random_pixels((batch, 3, 224, 224)))
    for d in sorted(Path({str(ROOT / "weights")!r}).glob("*/*/reference.json")):
        bare = sorted(d.parent.glob("checkpoint.*"))  # a facebookresearch file, no config.json
        source = bare[0] if bare and not (d.parent / "config.json").is_file() else d.parent
        for side in (64, 96):
            cnp.from_pretrained(source, backend="numba")(random_pixels((2, 3, side, side)))
    dispatchers = [f for f in vars(kernels).values() if isinstance(f, numba.core.registry.CPUDispatcher)]
    print(json.dumps({{"compiled": sum(sum(f.stats.cache_misses.values()) for f in dispatchers),
                      "loaded": sum(sum(f.stats.cache_hits.values()) for f in dispatchers),
                      "plan": list(kernels.PLAN)}}))
"""


@pytest.mark.slow
def test_auto_serves_with_numpy_until_the_background_compile_is_done(tmp_path):
    cache = tmp_path / "numba-cache"
    out, err = run_python(FIRST_CALL, NUMBA_CACHE_DIR=str(cache))
    first = json.loads(out)
    assert first == {"backend": "numba", "same_as_numpy": True, "compiled": 0, "loaded": 0}
    assert "compiling the Numba kernels in the background" in err

    deadline = time.monotonic() + 900  # the detached warm-up outlived the process that started it
    while not list(cache.rglob(warmup.MARKER)):
        assert time.monotonic() < deadline, "the background warm-up did not finish"
        time.sleep(1)
    marker = json.loads(next(cache.rglob(warmup.MARKER)).read_text())
    assert marker["seconds"] > 0
    # It compiled the plan the calling process ran, and chose none (that is the explicit warm-up's).
    assert tuple(marker["key"]["plan"]) == kernels.candidate_plans()[0]
    assert not list(cache.rglob(kernels.PLAN_FILE))

    out, err = run_python(FIRST_CALL, NUMBA_CACHE_DIR=str(cache))
    warm = json.loads(out)
    assert warm["compiled"] == 0 and warm["loaded"] > 0, warm  # Numba served, from the cache
    assert "compiling" not in err

    # The explicit warm-up chooses the plan, compiles it, and later processes run it, compiling nothing.
    proc = subprocess.run([sys.executable, "-m", "convnext_np.warmup"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "NUMBA_CACHE_DIR": str(cache),
                                            "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "chose the GEMM plan" in proc.stdout, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    chosen = json.loads(next(cache.rglob(kernels.PLAN_FILE)).read_text())
    assert tuple(chosen["plan"]) in kernels.candidate_plans()
    assert sorted(chosen["ms_per_image"]) == sorted(",".join(map(str, p)) for p in kernels.candidate_plans())
    out, _ = run_python(FULL_SIZE, NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="2")
    full = json.loads(out)
    assert full["compiled"] == 0 and full["loaded"] > 0, full
    assert full["plan"] == chosen["plan"]


def test_numba_by_name_compiles_in_the_call_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(warmup, "_announced", set())
    monkeypatch.setattr(warmup, "ready", lambda: False)
    started, compiled = [], []
    monkeypatch.setattr(warmup.subprocess, "Popen", lambda *a, **k: started.append(a))
    monkeypatch.setattr(warmup, "run", lambda wait=False: compiled.append(wait))
    with caplog.at_level(logging.WARNING, logger="convnext_np"):
        assert warmup.serving("numba", by_name=True) == "numba"
        assert warmup.serving("numba", by_name=True) == "numba"
    assert compiled == [True, True]  # in the call, after any compile running elsewhere
    assert len(caplog.records) == 1 and "before the first call" in caplog.records[0].getMessage()
    assert not started

    with caplog.at_level(logging.WARNING, logger="convnext_np"):
        assert warmup.serving("numba", by_name=False) == "numpy"
        assert warmup.serving("numba", by_name=False) == "numpy"
    assert len(started) == 1  # one background warm-up per process
    assert "in the background" in caplog.records[-1].getMessage()
    assert warmup.serving("numpy", by_name=False) == "numpy"


def test_the_estimate_is_the_last_compile_measured_here(tmp_path, monkeypatch):
    monkeypatch.setattr(warmup, "_cache_dir", lambda: tmp_path)
    assert warmup.estimate() == warmup.FIRST_ESTIMATE
    (tmp_path / warmup.MARKER).write_text(json.dumps({"key": {"stale": True}, "seconds": 41.7}))
    assert warmup.estimate() == "about 42 s"
    monkeypatch.setattr(warmup, "_ready", False)
    assert not warmup.ready()  # a marker made for other kernels (an upgrade) is not warm


def test_one_warm_up_per_machine_at_a_time(tmp_path):
    probe = f"""
        from pathlib import Path
        from convnext_np import warmup
        with warmup._exclusive(Path({str(tmp_path)!r}), wait=False) as mine:
            print(mine)
    """
    with warmup._exclusive(tmp_path, wait=False) as mine:
        assert mine
        assert run_python(probe)[0].strip() == "False"
    assert run_python(probe)[0].strip() == "True"


def test_chosen_by_name(monkeypatch):
    monkeypatch.delenv("CONVNEXT_NP_BACKEND", raising=False)
    assert not backends.chosen_by_name("auto")
    assert backends.chosen_by_name("numba") and backends.chosen_by_name("numpy")
    monkeypatch.setenv("CONVNEXT_NP_BACKEND", "numba")
    assert backends.chosen_by_name("auto")



def test_the_fastest_plan_is_recorded_for_this_machine_only(tmp_path, monkeypatch):
    plans = kernels.candidate_plans()
    names = [",".join(map(str, p)) for p in plans]
    # Fake timings: the second candidate is fastest at batch 1 and at batch 8, though not in every round.
    fake = {n: {1: [[3.0 + i, 1.0]] * 2, 8: [[8.0, 8.0 + i], [9.0, 9.0]]} for i, n in enumerate(names)}
    fake[names[1]] = {1: [[2.0, 1.0], [9.0, 9.0]], 8: [[7.0, 8.0], [9.0, 9.0]]}
    monkeypatch.setattr(warmup, "time_gemms", lambda contenders: {c: fake[c] for c in contenders})
    monkeypatch.setattr(warmup, "_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(kernels, "cache_dir", lambda: tmp_path)
    assert kernels.recorded_plan() is None
    best, scores = warmup.tune()
    assert best == plans[1] and min(scores, key=scores.get) == names[1]
    assert kernels.recorded_plan() == plans[1]
    record = json.loads((tmp_path / kernels.PLAN_FILE).read_text())
    record["key"]["cpu"] = "another-cpu"  # a plan chosen on another machine (or for another kernels.py) is not used
    (tmp_path / kernels.PLAN_FILE).write_text(json.dumps(record))
    assert kernels.recorded_plan() is None


def test_a_failed_tuning_still_compiles_the_plan_in_use(tmp_path, monkeypatch, caplog):
    def broken():
        raise RuntimeError("the GEMM worker for 16,14,32,224,256 failed (exit -9)")

    compiled = []
    monkeypatch.setattr(warmup, "_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(warmup, "_ready", False)
    monkeypatch.setattr(warmup, "_needs_tuning", lambda: True)
    monkeypatch.setattr(warmup, "tune", broken)
    monkeypatch.setattr(warmup, "compile_all", lambda: compiled.append(kernels.PLAN))
    with caplog.at_level(logging.WARNING, logger="convnext_np"):
        assert warmup.run(tune_plan=True) > 0
    assert compiled == [kernels.PLAN] and "choosing the GEMM plan failed" in caplog.text
    assert json.loads((tmp_path / warmup.MARKER).read_text())["key"]["plan"] == list(kernels.PLAN)


def test_prepare_initialises_numba_in_the_background_only_when_it_may_serve():
    out, _ = run_python("""
        import sys
        from convnext_np import backends
        backends.prepare("numpy")
        assert not backends._preparing and "numba" not in sys.modules
        backends.prepare("auto")
        backends.prepare("numba")  # once per process
        assert len(backends._preparing) == 1
        backends._preparing[0].join(120)
        print("numba.np.arraymath" in sys.modules)  # imported when the compiler's registries load
    """)
    assert out.strip() == "True"


def test_the_package_does_not_import_warmup():
    """``python -m convnext_np.warmup`` imports the package first; were warmup imported with it,
    runpy would warn and run a second copy of the module as __main__."""
    out, _ = run_python("import sys, convnext_np; print('convnext_np.warmup' in sys.modules)")
    assert out.strip() == "False"
