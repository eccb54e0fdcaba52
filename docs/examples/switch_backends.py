"""Switch backends
===============

The forward pass in ``convnext_np.model`` is written once; the ops it calls come from a
*backend*, a module with the functions of ``convnext_np.ops``. ``"numpy"`` is the readable
reference; faster ones (Numba) register in ``convnext_np.backends.BACKENDS``. Pick one with
``from_pretrained(..., backend=NAME)``, or for every model with the environment variable
``CONVNEXT_NP_BACKEND``; ``"auto"`` takes the first that imports.

This script runs every registered backend that imports here on the same batch, times it, and
checks that its logits agree with the NumPy reference within float32 rounding.

    python docs/examples/switch_backends.py --model facebook/convnext-tiny-224
"""

import argparse
import time
from pathlib import Path

import numpy as np

import convnext_np as cnp
from convnext_np import backends
from convnext_np.testing import LOGITS_ATOL

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/data/images"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=str(ROOT / "weights/fixtures/hf-safetensors"))
args = parser.parse_args()

print(f"registered backends: {', '.join(backends.BACKENDS)}; 'auto' means {backends.resolve('auto')!r}")
models = {}
for name in backends.BACKENDS:
    try:
        models[name] = cnp.from_pretrained(args.model, backend=name)
    except ImportError as e:  # registered, but its dependency is not installed here
        print(f"{name:8s} skipped: {e}")

pixel_values = models["numpy"].preprocessor([IMAGES / "chelsea.png", IMAGES / "rocket.jpg"])
reference = models["numpy"](pixel_values).logits
failed = False
for name, model in models.items():
    model(pixel_values)  # warm up (a JIT backend compiles on first use)
    start = time.perf_counter()
    logits = model(pixel_values).logits
    ms = (time.perf_counter() - start) * 1e3
    diff = float(np.abs(logits - reference).max())
    ok = diff <= LOGITS_ATOL and (logits.argmax(1) == reference.argmax(1)).all()
    failed |= not ok
    print(f"{name:8s} {ms:8.1f} ms   max |logits - numpy| {diff:.2e}   {'agrees' if ok else 'DISAGREES'}")
raise SystemExit(1 if failed else 0)
