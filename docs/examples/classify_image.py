"""Classify an image
=================

Load a ConvNeXt, let its own preprocessor prepare the image (resize, centre crop, normalize,
as the checkpoint's ``preprocessor_config.json`` says), and print the top five labels with
their softmax probabilities.

    python docs/examples/classify_image.py photo.jpg --model facebook/convnext-tiny-224

Without arguments it classifies ``tests/data/images/chelsea.png`` with the micro test model
committed in ``weights/fixtures`` (random weights, ten made-up classes: the labels mean
nothing, but every step is the real one).
"""

import argparse
from pathlib import Path

import convnext_np as cnp

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("image", nargs="?", default=str(ROOT / "tests/data/images/chelsea.png"))
parser.add_argument("--model", default=str(ROOT / "weights/fixtures/hf-safetensors"),
                    help="hub id, timm name, alias, or a local directory / weights file")
args = parser.parse_args()

model = cnp.from_pretrained(args.model)
print(model)
print(f"preprocessing: {model.preprocessor}")

predictions = cnp.classify(args.image, model=model, top_k=5)  # best first
print(f"\n{args.image}")
for rank, p in enumerate(predictions, 1):
    print(f"  {rank}. {p.score:7.2%}  {p.label}  (class {p.index})")
