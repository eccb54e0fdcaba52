"""Export a golden bundle
======================

A golden bundle is what another port (Rust, C, JavaScript, Julia, ...) tests itself against:
``tensors.safetensors`` with the input and every stage's output, and ``manifest.json`` with
their hashes, statistics and the tolerances we recommend (see ``docs/porting.md``). This is
``convnext-np golden`` from Python: write one, print part of its manifest, and check it by
re-running the model on the stored ``pixel_values``.

    python docs/examples/export_golden.py cat.png --model facebook/convnext-tiny-224 --out golden/

The defaults use the micro test model and two images in ``tests/data/images``.
"""

import argparse
import json
import tempfile
from pathlib import Path

from convnext_np import golden

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/data/images"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("images", nargs="*", default=[str(IMAGES / "chelsea.png"), str(IMAGES / "camera.png")])
parser.add_argument("--model", default=str(ROOT / "weights/fixtures/hf-safetensors"))
parser.add_argument("--out", default=None, help="output directory (default: a temporary one)")
parser.add_argument("--float64", action="store_true", help="run the network in float64")
args = parser.parse_args()

out = Path(args.out or tempfile.mkdtemp(prefix="golden-"))
manifest = golden.write_bundle(args.images, args.model, out, float64=args.float64)
print(f"wrote {out / 'tensors.safetensors'} and {out / 'manifest.json'}")
print(json.dumps({"model": manifest["model"]["name"], "compute": manifest["compute"],
                  "logits": manifest["tensors"]["logits"]}, indent=2))

report = golden.check_bundle(out, args.model)  # re-run, compare every tensor, check every hash
print(report)
raise SystemExit(0 if report.ok else 1)
