"""Published logits of the official checkpoints, as data, and ``verify`` against them.

Every number here was published by someone else: the transformers test
suite's expected ``logits[0, :3]`` for ``facebook/convnext-tiny-224`` and
``facebook/convnextv2-tiny-1k-224`` on the COCO val2017 "two cats" image (000000039769), and
the expected slices hard-coded in transformers' ``convert_convnext_to_pytorch.py`` and
``convert_convnextv2_to_pytorch.py`` for every converted checkpoint. The image is not in this
repository; get it from the transformers repo at ``tests/fixtures/tests_samples/COCO/000000039769.png``
(the test values) or from http://images.cocodataset.org/val2017/000000039769.jpg (the
converter values).

Which values judge a checkpoint: the test suite's, where it has any (``kind="test"``), else the
converter's. A checkpoint passes when its logits meet at least one judged row within that
row's tolerance; the other rows are printed for information.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import find_checkpoint

COCO_PNG_PATH = "tests/fixtures/tests_samples/COCO/000000039769.png"  # in the transformers repo
COCO_PNG = f"{COCO_PNG_PATH} (transformers repo)"
COCO_JPG = "http://images.cocodataset.org/val2017/000000039769.jpg"
COCO_SIZE = (640, 480)  # width, height of COCO val2017 000000039769
HF_TEST = "transformers tests/models/convnext/test_modeling_convnext.py, test_inference_image_classification_head"
HF_CONVERTER = "transformers src/transformers/models/convnext/convert_convnext_to_pytorch.py"
HF_TEST_V2 = "transformers tests/models/convnextv2/test_modeling_convnextv2.py, test_inference_image_classification_head"
HF_CONVERTER_V2 = "transformers src/transformers/models/convnextv2/convert_convnextv2_to_pytorch.py"


@dataclass(frozen=True)
class Expected:
    """One published expectation: ``|logits[0, :k] - logits| <= atol + rtol * |logits|``."""

    checkpoint: str  # Hugging Face hub id
    logits: tuple  # the expected logits[0, :len(logits)], as published (4 decimals)
    atol: float
    rtol: float
    image: str  # which image, and where to get it
    source: str  # where the values are published
    kind: str  # "test" (the transformers test suite) or "converter"
    preprocessing: str  # how the publisher prepared the image
    note: str = ""


def _converter(checkpoint, fb, logits):
    return Expected(checkpoint, logits, atol=1e-3, rtol=1e-5, image=COCO_JPG,
                    source=f"{HF_CONVERTER} (checkpoint {fb})", kind="converter",
                    preprocessing="ConvNextImageProcessor on the JPEG, 'obtained without center "
                                  "cropping' (the script's comment)",
                    note="may not reproduce with today's processor (transformers PR #37460 mentions "
                         "an AssertionError against these values)")


def _converter_v2(size, fb, logits):
    """A row of the ConvNeXt V2 converter's table: ``logits[0, :5]``, atol 1e-3."""
    hf = "facebook/" + fb.split("/")[1].replace("_", "-").removesuffix("-ema")
    crop = "crop_pct 224/256" if size == 224 else "no crop"
    return Expected(hf, logits, atol=1e-3, rtol=1e-5, image=COCO_JPG,
                    source=f"{HF_CONVERTER_V2} (checkpoint {fb})", kind="converter",
                    preprocessing=f"ConvNextImageProcessor(size={size}, {crop}, bicubic, ImageNet "
                                  "mean and std) on the JPEG, 'obtained without center cropping' "
                                  "(the script's comment)")


# torch.allclose's default rtol (1e-5) applies wherever a publisher gave only atol.
PUBLISHED = (
    Expected("facebook/convnext-tiny-224", (-0.0260, -0.4739, 0.1911), atol=1e-4, rtol=1e-5,
             image=COCO_PNG, source=f"{HF_TEST}, older version (commit ed7cdc5); the same values "
                                    "in the TF and Flax tests", kind="test",
             preprocessing="the PIL feature extractor of facebook/convnext-tiny-224 (224, crop_pct "
                           "0.875, bicubic): what convnext_np's ImageProcessor reproduces"),
    Expected("facebook/convnext-tiny-224", (-0.0267, -0.4735, 0.1901), atol=2e-4, rtol=2e-4,
             image=COCO_PNG, source=f"{HF_TEST}, current version (commit 04d4145)", kind="test",
             preprocessing="AutoImageProcessor of facebook/convnext-tiny-224, most likely the "
                           "torchvision backend (inferred, not confirmed)",
             note="up to 1e-3 from the PIL-pipeline values: a PIL pipeline need not meet it"),
    # The table of transformers' convert_convnext_to_pytorch.py, one row per facebookresearch checkpoint.
    _converter("facebook/convnext-tiny-224", "convnext_tiny_1k_224_ema", (-0.1210, -0.6605, 0.1918)),
    _converter("facebook/convnext-small-224", "convnext_small_1k_224_ema", (-0.4473, -0.1847, -0.6365)),
    _converter("facebook/convnext-base-224", "convnext_base_1k_224_ema", (0.4525, 0.7539, 0.0308)),
    _converter("facebook/convnext-base-384", "convnext_base_1k_384", (0.3561, 0.6350, -0.0384)),
    _converter("facebook/convnext-large-224", "convnext_large_1k_224_ema", (0.4174, -0.0989, 0.1489)),
    _converter("facebook/convnext-large-384", "convnext_large_1k_384", (0.2513, -0.1349, -0.1613)),
    _converter("facebook/convnext-base-224-22k", "convnext_base_22k_224", (1.2980, 0.3631, -0.1198)),
    _converter("facebook/convnext-large-224-22k", "convnext_large_22k_224", (1.2963, 0.1227, 0.1723)),
    _converter("facebook/convnext-xlarge-224-22k", "convnext_xlarge_22k_224", (1.7956, 0.8390, 0.2820)),
    _converter("facebook/convnext-base-224-22k-1k", "convnext_base_22k_1k_224", (-0.2822, -0.0502, -0.0878)),
    _converter("facebook/convnext-base-384-22k-1k", "convnext_base_22k_1k_384", (-0.5672, -0.0730, -0.4348)),
    _converter("facebook/convnext-large-224-22k-1k", "convnext_large_22k_1k_224", (0.2681, 0.2365, 0.6246)),
    _converter("facebook/convnext-large-384-22k-1k", "convnext_large_22k_1k_384", (-0.2642, 0.3931, 0.5116)),
    _converter("facebook/convnext-xlarge-224-22k-1k", "convnext_xlarge_22k_1k_224_ema", (-0.6677, -0.1873, -0.8379)),
    _converter("facebook/convnext-xlarge-384-22k-1k", "convnext_xlarge_22k_1k_384_ema", (-0.7749, -0.2967, -0.6444)),
    # ConvNeXt V2 (Woo et al. 2023): the test suite's values for the tiny, then the converter's.
    Expected("facebook/convnextv2-tiny-1k-224", (0.9996, 0.1966, -0.4386), atol=1e-4, rtol=1e-4,
             image=COCO_PNG, source=f"{HF_TEST_V2}, older version (commit 2cc7e6a)", kind="test",
             preprocessing="AutoImageProcessor of facebook/convnextv2-tiny-1k-224 (224, crop_pct "
                           "0.875, bicubic), the PIL pipeline of the time"),
    Expected("facebook/convnextv2-tiny-1k-224", (0.9989, 0.1953, -0.4382), atol=1e-4, rtol=1e-4,
             image=COCO_PNG, source=f"{HF_TEST_V2}, current version (commit 04d4145)", kind="test",
             preprocessing="AutoImageProcessor of facebook/convnextv2-tiny-1k-224, most likely the "
                           "torchvision backend (inferred, as for the V1 values)",
             note="up to 1.3e-3 from the older values: a PIL pipeline need not meet it"),
    _converter_v2(224, "im1k/convnextv2_atto_1k_224_ema", (-0.3930, 0.1747, -0.5246, 0.4177, 0.4295)),
    _converter_v2(224, "im1k/convnextv2_femto_1k_224_ema", (-0.1727, -0.5341, -0.7818, -0.4745, -0.6566)),
    _converter_v2(224, "im1k/convnextv2_pico_1k_224_ema", (-0.0333, 0.1563, -0.9137, 0.1054, 0.0381)),
    _converter_v2(224, "im1k/convnextv2_nano_1k_224_ema", (-0.1744, -0.1555, -0.0713, 0.0950, -0.1431)),
    _converter_v2(224, "im1k/convnextv2_tiny_1k_224_ema", (0.9996, 0.1966, -0.4386, -0.3472, 0.6661)),
    _converter_v2(224, "im1k/convnextv2_base_1k_224_ema", (-0.2553, -0.6708, -0.1359, 0.2518, -0.2488)),
    _converter_v2(224, "im1k/convnextv2_large_1k_224_ema", (-0.0673, -0.5627, -0.3753, -0.2722, 0.0178)),
    _converter_v2(224, "im1k/convnextv2_huge_1k_224_ema", (-0.6377, -0.7458, -0.2150, 0.1184, -0.0597)),
    _converter_v2(224, "im22k/convnextv2_nano_22k_224_ema", (1.0799, 0.2322, -0.8860, 1.0219, 0.6231)),
    _converter_v2(384, "im22k/convnextv2_nano_22k_384_ema", (0.3766, 0.4917, -1.1426, 0.9942, 0.6024)),
    _converter_v2(224, "im22k/convnextv2_tiny_22k_224_ema", (0.4220, -0.6919, -0.4317, -0.2881, -0.6609)),
    _converter_v2(384, "im22k/convnextv2_tiny_22k_384_ema", (0.1082, -0.8286, -0.5095, 0.4681, -0.8085)),
    _converter_v2(224, "im22k/convnextv2_base_22k_224_ema", (-0.2419, -0.6221, 0.2176, -0.0980, -0.7527)),
    _converter_v2(384, "im22k/convnextv2_base_22k_384_ema", (0.0391, -0.4371, 0.3786, 0.1251, -0.2784)),
    _converter_v2(224, "im22k/convnextv2_large_22k_224_ema", (-0.0504, 0.5636, -0.1729, -0.6507, -0.3949)),
    _converter_v2(384, "im22k/convnextv2_large_22k_384_ema", (0.3560, 0.9486, 0.3149, -0.2667, -0.5138)),
    _converter_v2(384, "im22k/convnextv2_huge_22k_384_ema", (-0.2469, -0.4550, -0.5853, -0.0810, 0.0309)),
    _converter_v2(512, "im22k/convnextv2_huge_22k_512_ema", (-0.3090, 0.0802, -0.0682, -0.1979, -0.2826)),
)


def expectations(name: str, table=PUBLISHED) -> list:
    """The rows for a checkpoint named by hub id, alias or timm name (empty if none)."""
    row = find_checkpoint(name)
    hub_id = row.hf_id if row is not None and row.hf_id else name
    return [e for e in table if e.checkpoint == hub_id]


def judged(rows) -> list:
    """The rows a verdict rests on: the test suite's if there are any, else the converter's."""
    tests = [e for e in rows if e.kind == "test"]
    return tests or list(rows)


@dataclass
class Verification:
    """``logits[0, :k]`` of one image against one :class:`Expected`."""

    expected: Expected
    got: np.ndarray  # logits[0, :k], float32
    diff: np.ndarray  # got - expected
    allowed: np.ndarray  # atol + rtol * |expected|, per element

    @property
    def max_abs_diff(self) -> float:
        return float(np.abs(self.diff).max())

    @property
    def passed(self) -> bool:
        return bool((np.abs(self.diff) <= self.allowed).all())

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def verify(model, image, expected: Expected) -> Verification:
    """Run ``model`` (loaded) on one image with its own preprocessor; compare with ``expected``."""
    check_head(model, expected)
    return compare(model(model.preprocessor([image])).logits[0], expected)


def check_head(model, expected: Expected) -> None:
    """Raise ValueError when ``model``'s head cannot be the checkpoint ``expected`` is for."""
    row = find_checkpoint(expected.checkpoint)
    classes = model.config.num_labels
    if (row is not None and classes != row.num_labels) or classes < len(expected.logits):
        raise ValueError(f"{model.source}: a head of {classes} classes cannot be {expected.checkpoint}"
                         + (f" ({row.num_labels} classes)" if row is not None else ""))


def compare(logits, expected: Expected) -> Verification:
    """One image's logits (K,) against ``expected``."""
    want = np.asarray(expected.logits, dtype=np.float64)
    got = np.asarray(logits)[:len(want)]
    return Verification(expected, got, got.astype(np.float64) - want,
                        expected.atol + expected.rtol * np.abs(want))


def checkpoint_of_path(path: str) -> str | None:
    """A hub id read off a Hugging Face cache path (``.../models--facebook--convnext-tiny-224/...``)."""
    for part in Path(path).parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return None
