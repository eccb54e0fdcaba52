"""Write tests/data/hf_pixel_values.npz: transformers' pixel_values for a few test photos.

    python tests/data/make_hf_pixels.py      # needs transformers (the reference extra)

The oracle for the claim that ``ImageProcessor``'s ``"hf"`` mode is bit-identical to
transformers' ``ConvNextImageProcessorPil`` (applied after ``transformers.image_utils.load_image``,
as ``pipeline("image-classification")`` does), so that ``tests/test_preprocess.py`` checks it
without transformers installed. One case per image kind and resize path, to keep the file small:
an RGB PNG and a JPEG at 224 (crop 0.875), greyscale at 288 (crop 1.0), RGBA at 384 (a warp,
no crop). The arrays are float32, as transformers returns them; ``meta`` (JSON) records each
case's settings, the sha256 of each photo and the transformers version.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
OUT = HERE / "hf_pixel_values.npz"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CASES = [  # (photo, size, crop_pct)
    ("chelsea.png", 224, 0.875),
    ("rocket.jpg", 224, 0.875),
    ("camera.png", 288, 1.0),
    ("logo.png", 384, None),
]


def main():
    import transformers
    from transformers.image_utils import load_image

    arrays, cases = {}, {}
    for name, size, crop_pct in CASES:
        processor = transformers.ConvNextImageProcessorPil(
            size={"shortest_edge": size}, crop_pct=crop_pct, resample=3,  # PIL bicubic
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        pixels = processor(load_image(str(IMAGES / name)), return_tensors="np")["pixel_values"]
        assert pixels.dtype == np.float32 and pixels.shape == (1, 3, size, size), pixels.shape
        key = f"{name}@{size}"
        arrays[key] = pixels[0]
        cases[key] = {"image": name, "size": size, "crop_pct": crop_pct}
    meta = {
        "transformers": transformers.__version__,
        "processor": "ConvNextImageProcessorPil(resample=3, ImageNet mean and std)",
        "cases": cases,
        "sha256": {name: hashlib.sha256((IMAGES / name).read_bytes()).hexdigest()
                   for name, _, _ in CASES},
    }
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta, indent=1)), **arrays)
    print(f"{OUT.relative_to(HERE.parent.parent)}: {len(arrays)} cases, "
          f"{OUT.stat().st_size / 1e3:.0f} kB, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
