"""glibc's malloc thresholds for the numpy backend (``convnext_np/heap.py``).

The settings are the process's, so the forward passes that count page faults run in a fresh
process each: once as the library runs, once with :func:`heap.keep_freed_memory` switched off,
which shows that the count can fail the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convnext_np import heap
from conftest import FIXTURES

MODEL = FIXTURES / "hf-safetensors"  # at 448 x 448, stage 1's first Linear gives 112 x 112 x 48 (2.3 MiB)
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

COUNT_FAULTS = """
import json, resource, sys
import numpy as np
import convnext_np
from convnext_np import heap
if sys.argv[2] == "off":
    heap.keep_freed_memory = lambda: False
net = convnext_np.from_pretrained(sys.argv[1], backend="numpy", num_threads=1)
x = np.random.default_rng(0).standard_normal((1, 3, 448, 448)).astype(np.float32)
net(x)
net(x)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""

# With transparent huge pages "always", the kernel maps fresh memory 2 MiB at a time, and a pass
# without the thresholds takes too few faults for the control test to tell.
THP_ALWAYS = THP.exists() and "[always]" in THP.read_text()
glibc_only = pytest.mark.skipif(not heap.is_glibc() or THP_ALWAYS,
                                reason="glibc's malloc, with 4 KiB pages on first touch")


def page_faults_per_pass(mode: str) -> list:
    """Page faults of each of three forward passes, after two, in a fresh process with the
    environment's own malloc settings and preloads removed."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", COUNT_FAULTS, str(MODEL), mode], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@glibc_only
def test_numpy_backend_reuses_its_freed_memory():
    assert max(page_faults_per_pass("on")) < 50


@glibc_only
def test_without_the_thresholds_each_pass_faults_its_arrays_in_anew():
    assert min(page_faults_per_pass("off")) > 500  # the bound above can fail


@pytest.mark.parametrize("environ, user_set", [
    ({}, False),
    ({"MALLOC_ARENA_MAX": "2"}, False),  # arenas, not when malloc maps and trims
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "0"}, True),
    ({"MALLOC_TOP_PAD_": "0"}, True),
    ({"MALLOC_MMAP_MAX_": "0"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.trim_threshold=4096"}, True),
])
def test_the_users_malloc_settings_stand(environ, user_set):
    assert heap.user_set_malloc(environ) is user_set
