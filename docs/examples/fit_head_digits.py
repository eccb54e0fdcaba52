"""Fit a new head, then evaluate it
==================================

Teach a ConvNeXt new classes without PyTorch: scikit-learn's bundled handwritten digits (1797
8x8 images from UCI, ten classes) are upscaled and written as a folder of class folders, the
last fifth of each class set aside as a test set. ``cnp.fit_head`` fits a logistic-regression
head on the pooled features of the training folder (holding out a validation split of its
own), the model is saved in Hugging Face layout, and ``cnp.evaluate`` scores the saved model on
the test folder.

    python docs/examples/fit_head_digits.py                      # the micro test model
    python docs/examples/fit_head_digits.py --random tiny        # ConvNeXt-T, random weights
    python docs/examples/fit_head_digits.py --model facebook/convnext-tiny-224

Random weights are a lower bound: a network trained on ImageNet gives far better features.
Needs scikit-learn (for the data only).
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

import convnext_np as cnp

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=str(ROOT / "weights/fixtures/hf-safetensors"))
parser.add_argument("--random", metavar="VARIANT", help="random weights of a variant instead "
                    f"({', '.join(cnp.VARIANTS)}), drawn as convnext_np.testing does")
parser.add_argument("--size", type=int, default=64, help="side the digits are upscaled to")
parser.add_argument("--limit", type=int, default=None, help="use only the first N digits")
parser.add_argument("--backend", default="auto")
parser.add_argument("--work", default=None, help="folder for the images, the feature cache and "
                    "the saved model (default: a new temporary folder)")
args = parser.parse_args()

work = Path(args.work or tempfile.mkdtemp(prefix="digits-"))
work.mkdir(parents=True, exist_ok=True)
if args.random:
    from safetensors.numpy import save_file

    from convnext_np.testing import realistic_state_dict
    from convnext_np.weights import expected_shapes

    config = cnp.ConvNextConfig.from_variant(args.random, num_labels=0)
    save_file(realistic_state_dict(expected_shapes(config)), str(work / "random.safetensors"))
    args.model = str(work / "random.safetensors")
model = cnp.from_pretrained(args.model, backend=args.backend)
# The digits are square and small: resize to --size, no crop.
model.preprocessor = cnp.ImageProcessor(size=args.size, crop_pct=1.0)
print(f"{model}, {model.config.hidden_sizes[-1]} pooled features")

digits = load_digits()
images, targets = digits.images[:args.limit], digits.target[:args.limit]
total, seen = Counter(targets.tolist()), Counter()
for i, (pixels, digit) in enumerate(zip(images, targets.tolist())):
    seen[digit] += 1
    split = "test" if seen[digit] > 0.8 * total[digit] else "train"
    folder = work / split / str(digit)
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((pixels * 255 / 16).astype(np.uint8))
    image.resize((args.size, args.size), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")

fitted = cnp.fit_head(model, work / "train", val_fraction=0.2, seed=0,
                      cache_dir=work / "feature-cache")
r = fitted.fit_report
print(f"fit_head: {len(r.labels)} classes, {r.n_train} training and {r.n_val} validation images; "
      f"features {r.feature_seconds:.1f} s, L-BFGS {r.iterations} iterations {r.fit_seconds:.2f} s")
print(f"  training accuracy {r.train_accuracy:.1%}, validation accuracy {r.val_accuracy:.1%}")

out = work / "digits-classifier"
fitted.save_pretrained(out)
report = cnp.evaluate(work / "test", model=cnp.from_pretrained(out, backend=args.backend), top_k=(1, 2))
print(f"saved to {out}; evaluate on the {report.n} test images: "
      f"top-1 {report.top1:.1%}, top-2 {report.topk[2]:.1%}")
worst = min(report.per_class.items(), key=lambda kv: kv[1]["top1"])
print(f"  hardest digit: {worst[0]} ({worst[1]['top1']:.0%}); most frequent mistake: "
      + (" -> ".join(map(str, report.confusions[0][:2])) + f" ({report.confusions[0][2]} images)"
         if report.confusions else "none"))
