"""Extract features
================

ConvNeXt as a feature extractor: the pooled embedding (global average pool, then the final
LayerNorm; transformers' ``pooler_output``, timm's ``forward_head(pre_logits=True)``) for
image retrieval or a linear probe, and the per-stage feature maps for dense tasks.

    python docs/examples/extract_features.py a.jpg b.jpg c.jpg --model facebook/convnext-tiny-224

It prints each stage's feature-map shape (NCHW: 1/4, 1/8, 1/16, 1/32 of the input side) and
the cosine similarity between the images' embeddings. The default model is the micro test
model in ``weights/fixtures`` (random weights, so the similarities mean nothing).
"""

import argparse
from pathlib import Path

import numpy as np

import convnext_np as cnp

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/data/images"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("images", nargs="*", default=[str(IMAGES / n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")])
parser.add_argument("--model", default=str(ROOT / "weights/fixtures/hf-safetensors"))
args = parser.parse_args()

model = cnp.from_pretrained(args.model)
pixel_values = model.preprocessor(args.images)  # (N, 3, 224, 224) float32
out = model(pixel_values, output_hidden_states=True)

print(f"pixel_values {pixel_values.shape}")
for name, h in zip(["stem", "stage1", "stage2", "stage3", "stage4"], out.hidden_states):
    print(f"{name:8s} {h.shape}  ({pixel_values.shape[-1] // h.shape[-1]}x smaller than the input)")
print(f"pooled   {out.pooled.shape}  (one embedding per image)")

unit = out.pooled / np.linalg.norm(out.pooled, axis=1, keepdims=True)
similarity = unit @ unit.T  # cosine similarity, (N, N)
names = [Path(p).stem[:12] for p in args.images]
print("\ncosine similarity of the pooled embeddings")
print(" " * 12 + "".join(f"{n:>13s}" for n in names))
for n, row in zip(names, similarity):
    print(f"{n:>12s}" + "".join(f"{v:13.3f}" for v in row))
