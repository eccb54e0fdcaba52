"""Images in, ``pixel_values`` out, with the semantics of the reference preprocessors.

``crop_mode="hf"`` is Hugging Face's ``ConvNextImageProcessor`` (its PIL path):
below 384, resize the shortest edge to ``int(size / crop_pct)`` with PIL and centre-crop at
floor offsets; at 384 and above, resize to ``size x size`` with no crop; rescale by 1/255 in
float64, then normalize in float32. ``crop_mode="center"`` and ``"squash"`` are timm's eval
transform (``timm/data/transforms_factory.py``): shortest edge (or both sides, for squash) to ``floor(size / crop_pct)``,
centre crop at offsets rounded half to even as torchvision does, ``/ 255`` in float32.
``crop_mode="tf"`` is the evaluation of the Keras port of ConvNeXt (the TF-Hub weights):
TensorFlow's ``tf.image.resize(method="bicubic")`` of both sides to ``floor(size / crop_pct)``,
then ``tf.image.central_crop``; see :func:`tf_resize_bicubic`.

Every image becomes 8-bit RGB first, as transformers' ``pipeline("image-classification")``
prepares it (``load_image``): EXIF orientation applied, then ``Image.convert("RGB")`` (alpha is
dropped, palettes expanded); an animated image gives its first frame. One choice differs:
16-bit greyscale is scaled to 8 bits, where PIL's own conversion clips it at 255 (modes ``I;16``
and ``I``, as 16-bit PNG, PGM and TIFF open; an ``I`` image whose values all fit in 8 bits is
taken as 8-bit), and a float image (mode ``F``) whose values lie in 0..1 is scaled by 255, where
PIL would make it black. ``hf_exact=True`` restores PIL's conversion and, for PIL images handed
in, skips the EXIF step, as transformers' processor does when called directly.

Any exception raised while decoding an image becomes that image's :class:`ImageError`
(:func:`convnext_np.guards.decoding`); a preprocessing config is validated when it is read.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, WeightsError
from .guards import MAX_INPUT_SIZE, decoding, read_json_file
from .model import MIN_INPUT_SIZE

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
            "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
CROP_MODES = ("hf", "center", "squash", "tf")
# DINOv3's evaluation transform (transformers' DINOv3 converter): a 224x224 bilinear warp, ImageNet
# mean and std. transformers' fast processor resizes tensors with antialias, not with PIL, so its
# pixels differ from these by one uint8 step at most on our test photos.
DINOV3_PREPROCESSING = {"size": 224, "crop_pct": None, "resample": "bilinear", "crop_mode": "hf"}
# Images with more pixels than this are refused before they are decoded (decompression bombs).
# PIL's own warning threshold; raise it for legitimately huge scans.
MAX_IMAGE_PIXELS = 89_478_485
# Past this aspect ratio of the resized image to the crop, only the crop window is resampled.
WINDOW_ASPECT = 4


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class ImageProcessor:
    """Turns images (paths, PIL images, HxWx3 uint8 arrays, or lists of them) into float32
    ``pixel_values`` of shape (N, 3, size, size). The defaults are those of
    ``facebook/convnext-tiny-224`` (224, crop_pct 0.875, bicubic, ImageNet mean and std)."""

    size: int = 224
    crop_pct: float | None = 224 / 256
    resample: str = "bicubic"
    image_mean: tuple = IMAGENET_DEFAULT_MEAN
    image_std: tuple = IMAGENET_DEFAULT_STD
    crop_mode: str = "hf"
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    hf_exact: bool = False
    max_pixels: int = field(default=MAX_IMAGE_PIXELS, repr=False)

    def __post_init__(self):
        if isinstance(self.resample, int):
            self.resample = {int(v): k for k, v in RESAMPLE.items()}.get(self.resample, self.resample)
        problems = []
        if not (isinstance(self.resample, str) and self.resample in RESAMPLE):
            problems.append(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if not (_is_int(self.size) and MIN_INPUT_SIZE <= self.size <= MAX_INPUT_SIZE):
            problems.append(f"size must be an int from at least {MIN_INPUT_SIZE} (a ConvNeXt "
                            f"downsamples by 32) to {MAX_INPUT_SIZE}, got {self.size!r}")
        if self.crop_pct is not None and not (_is_finite(self.crop_pct) and 0 < self.crop_pct <= 4):
            problems.append(f"crop_pct must be a number in (0, 4], got {self.crop_pct!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not (isinstance(value, (list, tuple)) and len(value) == 3
                    and all(_is_finite(v) for v in value)):
                problems.append(f"{name} must be 3 finite numbers, got {value!r:.80}")
            elif name == "image_std" and min(value) <= 0:
                problems.append(f"image_std must be positive, got {value!r}")
        if not (_is_finite(self.rescale_factor) and self.rescale_factor > 0):
            problems.append(f"rescale_factor must be a positive number, got {self.rescale_factor!r:.80}")
        for name in ("do_resize", "do_rescale", "do_normalize", "hf_exact"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r:.80}")
        if not (_is_int(self.max_pixels) and self.max_pixels > 0):
            problems.append(f"max_pixels must be a positive int, got {self.max_pixels!r}")
        if problems:
            raise ValueError("invalid ImageProcessor: " + "; ".join(problems))
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    # --- the pipeline --------------------------------------------------------------------------
    def __call__(self, images) -> np.ndarray:
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ImageError("no images given")
        return np.stack([self.preprocess(image) for image in items])

    def preprocess(self, image) -> np.ndarray:
        """One image -> float32 (3, size, size)."""
        rgb = load_rgb(image, hf_exact=self.hf_exact, max_pixels=self.max_pixels)
        if self.crop_mode == "tf" and self.do_resize:  # TensorFlow keeps the unrounded floats
            x = self._tf_squash_and_crop(np.asarray(rgb))  # [H, W, 3] float32, 0..255 (+ overshoot)
        else:
            x = np.asarray(self.resize_and_crop(rgb), dtype=np.uint8)  # [H, W, 3]
        if self.do_rescale:
            if self.crop_mode == "hf":  # transformers: float64 multiply, then float32
                x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
            else:  # torchvision ToTensor: float32 divide
                x = x.astype(np.float32) / np.float32(1 / self.rescale_factor)
        x = x.astype(np.float32, copy=False)
        if self.do_normalize:
            x = (x - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3, H, W]

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """The RGB image resized and centre-cropped to (size, size), uint8 [H, W, 3]."""
        if not self.do_resize:
            return self._center_crop(np.asarray(image))
        s = self.size
        if self.crop_mode == "hf" and (s >= 384 or self.crop_pct is None):
            return np.asarray(self._resize(image, s, s))  # warp, no crop, as transformers does at 384+
        crop_pct = 224 / 256 if self.crop_pct is None else self.crop_pct
        if self.crop_mode == "hf":
            short = int(s / crop_pct)
        else:
            short = math.floor(s / crop_pct)
        if self.crop_mode == "squash":
            return self._center_crop(np.asarray(self._resize(image, short, short)))
        w, h = image.size
        if w <= h:  # the long side is truncated, as transformers and torchvision do
            new_w, new_h = short, int(short * h / w)
        else:
            new_w, new_h = int(short * w / h), short
        if max(new_w, new_h) > WINDOW_ASPECT * s and min(new_w, new_h) >= s:
            return self._resize_crop_window(image, new_w, new_h)
        return self._center_crop(np.asarray(self._resize(image, new_w, new_h)))

    def _tf_squash_and_crop(self, x: np.ndarray) -> np.ndarray:
        """Both sides to floor(size / crop_pct) with TensorFlow's bicubic, then the centre size
        x size, as ``tf.image.central_crop`` takes it: 256 -> 224 starts at 256 // 16 = 16."""
        short = math.floor(self.size / (224 / 256 if self.crop_pct is None else self.crop_pct))
        x = tf_resize_bicubic(x, short, short)
        top = (short - self.size) // 2
        return x[top:top + self.size, top:top + self.size]

    def _resize(self, image, width, height, box=None):
        return image.resize((width, height), resample=RESAMPLE[self.resample], box=box, reducing_gap=None)

    def _resize_crop_window(self, image, new_w, new_h):
        """Resample only the crop window of the (new_w, new_h) resize, so memory stays that of
        the crop instead of growing with the aspect ratio (a 1000x2 image would otherwise be
        resized to 128000x256).

        Two passes, as PIL's own resize makes them (horizontal, then vertical), each given the
        window as its ``box``; the horizontal pass sees only the source rows the vertical filter
        reaches. The filter scale differs from the full resize's in the last bits, so a few
        pixels may differ by a few levels (at most 3/255 on random images in the tests).
        """
        s, (width, height) = self.size, image.size
        top, left = self._crop_offsets(new_h, new_w)
        sx, sy = width / new_w, height / new_h
        x0, x1, y0, y1 = left * sx, (left + s) * sx, top * sy, (top + s) * sy
        margin = math.ceil(2 * max(sy, 1.0)) + 2  # bicubic support, widened when downscaling
        r0, r1 = max(int(y0) - margin, 0), min(math.ceil(y1) + margin, height)
        rows = self._resize(image.crop((0, r0, width, r1)), s, r1 - r0, box=(x0, 0, x1, r1 - r0))
        return np.asarray(self._resize(rows, s, s, box=(0, y0 - r0, s, y1 - r0)))

    def _crop_offsets(self, h, w):
        s = self.size
        if self.crop_mode == "hf":
            return (h - s) // 2, (w - s) // 2
        return int(round((h - s) / 2.0)), int(round((w - s) / 2.0))  # torchvision, half to even

    def _center_crop(self, x: np.ndarray) -> np.ndarray:
        """Crop (or zero-pad, as transformers does) the centre size x size of [H, W, 3]."""
        s = self.size
        h, w = x.shape[:2]
        if h < s or w < s:
            padded = np.zeros((max(h, s), max(w, s), 3), np.uint8)
            top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[top:top + h, left:left + w] = x
            x, h, w = padded, *padded.shape[:2]
        top, left = self._crop_offsets(h, w)
        return x[top:top + s, left:left + s]

    # --- configs on disk -----------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> "ImageProcessor":
        """From a transformers ``preprocessor_config.json``."""
        size = d.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height")
        kwargs = {"size": size, "crop_pct": d.get("crop_pct"), "resample": d.get("resample", 3),
                  "image_mean": d.get("image_mean", IMAGENET_DEFAULT_MEAN),
                  "image_std": d.get("image_std", IMAGENET_DEFAULT_STD), "crop_mode": "hf"}
        for flag in ("do_resize", "do_rescale", "rescale_factor", "do_normalize"):
            if flag in d:
                kwargs[flag] = d[flag]
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_timm_cfg(cls, cfg: dict, test_time: bool = False, **overrides) -> "ImageProcessor":
        """From timm's ``pretrained_cfg`` (the ``config.json`` of a timm hub repo). With
        ``test_time``, its ``test_input_size`` and ``test_crop_pct`` where it has them: the
        larger evaluation size many timm checkpoints score best at (``results-imagenet.csv``
        lists both)."""
        if test_time:
            cfg = {**cfg, **{key: cfg[f"test_{key}"] for key in ("input_size", "crop_pct")
                             if cfg.get(f"test_{key}") is not None}}
        input_size = cfg.get("input_size", (3, 224, 224))
        if not (isinstance(input_size, (list, tuple)) and len(input_size) == 3
                and all(_is_int(v) for v in input_size) and input_size[1] == input_size[2]):
            raise WeightsError(f"timm input_size must be [3, size, size], got {input_size!r:.80}")
        crop_mode = cfg.get("crop_mode", "center")
        if crop_mode not in ("center", "squash"):
            raise WeightsError(f"timm crop_mode {crop_mode!r:.40} is not supported (center, squash)")
        kwargs = {"size": input_size[-1], "crop_pct": cfg.get("crop_pct", 0.875),
                  "resample": cfg.get("interpolation", "bicubic"),
                  "image_mean": cfg.get("mean", IMAGENET_DEFAULT_MEAN),
                  "image_std": cfg.get("std", IMAGENET_DEFAULT_STD), "crop_mode": crop_mode}
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_pretrained(cls, source, test_time: bool = False, **overrides) -> "ImageProcessor":
        """From a directory's ``preprocessor_config.json`` or timm ``config.json``.

        A directory with neither, or a bare weights file, gets the defaults (the ImageNet
        evaluation settings of every ConvNeXt trained at 224), with ``overrides`` applied.
        ``test_time`` picks a timm config's test-time size (see :meth:`from_timm_cfg`).
        """
        path = Path(os.fspath(source))
        directory = path if path.is_dir() else path.parent
        where = directory / "preprocessor_config.json"
        try:
            if where.is_file():
                d = read_json_file(where, "preprocessing config")
                return cls.from_hf_dict(_object(d), **overrides)
            where = directory / "config.json"
            if where.is_file() and path.is_dir():
                d = _object(read_json_file(where, "config"))
                if "pretrained_cfg" in d:
                    return cls.from_timm_cfg(_object(d["pretrained_cfg"]), test_time, **overrides)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            message = str(e)
            raise WeightsError(message if message.startswith(str(where)) else
                               f"{where}: bad preprocessing config: {message}") from None
        return cls(**overrides)

    def to_hf_dict(self) -> dict:
        """A transformers ``preprocessor_config.json``. timm's ``center`` mode maps onto it (up
        to torchvision's crop rounding); ``squash`` only at 384 and above, where both warp."""
        if self.crop_mode == "squash" and self.size < 384 and self.crop_pct not in (None, 1.0):
            raise ValueError(f"crop_mode 'squash' at {self.size} has no transformers equivalent")
        if self.crop_mode == "tf":
            raise ValueError("crop_mode 'tf' (TensorFlow's resize) has no transformers equivalent")
        d = asdict(self)
        return {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": self.size},
                "crop_pct": self.crop_pct, "resample": int(RESAMPLE[self.resample]),
                "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                **{k: d[k] for k in ("do_resize", "do_rescale", "rescale_factor", "do_normalize")}}


# Evaluation preprocessing by name (``convnext-np evaluate --profile``): the checkpoint's own
# size, mean and std, resized and cropped as each reference evaluates. "tfhub" is the Keras
# port's ImageNet evaluation (sayakpaul/keras-convnext-conversion, in1k-eval/eval.ipynb):
# tf.image.resize(image, (256, 256), method="bicubic"), then tf.image.central_crop(0.875).
PROFILES = {
    "model": "the checkpoint's own preprocessing (preprocessor_config.json or timm's cfg)",
    "hf": "transformers' ConvNextImageProcessor: shortest edge to int(size/crop_pct), centre crop",
    "center": "timm's eval transform: shortest edge to floor(size/crop_pct), centre crop",
    "timm": "the same as center (timm's default crop_mode)",
    "squash": "timm's squash: both sides to floor(size/crop_pct), centre crop",
    "tfhub": "the Keras/TF-Hub port's evaluation: both sides to 256 with TensorFlow's "
             "bicubic (no antialiasing), centre crop 224",
}


def profile_processor(name: str, base: ImageProcessor) -> ImageProcessor:
    """``base`` (a checkpoint's processor) resized and cropped as profile ``name`` says."""
    if name not in PROFILES:
        raise ValueError(f"unknown preprocessing profile {name!r}; choose one of {', '.join(PROFILES)}")
    if name == "model":
        return base
    if name == "tfhub":
        return replace(base, crop_mode="tf", crop_pct=224 / 256)
    return replace(base, crop_mode={"timm": "center"}.get(name, name))


# TensorFlow's bicubic kernel (Keys 1981, a = -0.5) tabulated at 1/1024 steps, as
# tensorflow/core/kernels/image/resize_bicubic_op.cc does: TABLE[0][i] is the weight at distance
# i/1024, TABLE[1][i] at distance 1 + i/1024.
_TF_TABLE_SIZE = 1024


def _tf_cubic_table() -> np.ndarray:
    a = -0.5
    x = (np.arange(_TF_TABLE_SIZE + 1) / _TF_TABLE_SIZE).astype(np.float32).astype(np.float64)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x = x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([near, far]).astype(np.float32)


def _tf_cubic_taps(in_size: int, out_size: int):
    """Source indices and float32 weights, (out_size, 4) each, of one axis of TensorFlow's
    ``resize_bicubic(half_pixel_centers=True)``: the output pixel x samples the input at
    (x + 0.5) * in/out - 0.5; taps outside the image get weight 0 and the other weights are
    renormalized to sum to 1."""
    table = _tf_cubic_table()
    scale = np.float32(in_size) / np.float32(out_size)
    loc = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(loc)
    offset = np.rint((loc - base) * np.float32(_TF_TABLE_SIZE)).astype(np.int64)  # lrintf
    weights = np.stack([table[1][offset], table[0][offset], table[0][_TF_TABLE_SIZE - offset],
                        table[1][_TF_TABLE_SIZE - offset]], axis=1)
    index = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    weights[(index < 0) | (index >= in_size)] = 0
    total = weights[:, 0] + weights[:, 1] + weights[:, 2] + weights[:, 3]
    weights *= (np.float32(1) / total)[:, None]
    return np.clip(index, 0, in_size - 1), weights


def tf_resize_bicubic(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """TensorFlow 2's ``tf.image.resize(x, (height, width), method="bicubic")`` of an [H, W, C]
    array: Keys' cubic convolution (a = -0.5) on half-pixel centres, four taps a side, no
    antialiasing when shrinking, float32 out, neither rounded nor clipped. Columns are
    interpolated first, then rows, each as four products summed in order, as TensorFlow does."""
    x = np.asarray(x, dtype=np.float32)
    rows, row_w = _tf_cubic_taps(x.shape[0], height)
    cols, col_w = _tf_cubic_taps(x.shape[1], width)
    # [height, W, C]: each needed input row, interpolated vertically
    tall = sum((row_w[:, k, None, None] * x[rows[:, k]] for k in range(1, 4)),
               row_w[:, 0, None, None] * x[rows[:, 0]])
    return sum((col_w[None, :, k, None] * tall[:, cols[:, k]] for k in range(1, 4)),
               col_w[None, :, 0, None] * tall[:, cols[:, 0]])


def _object(d) -> dict:
    if not isinstance(d, dict):
        raise WeightsError(f"expected a JSON object, got {type(d).__name__}")
    return d


def _describe(image) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


def load_rgb(image, *, hf_exact: bool = False, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A path, PIL image or uint8 array as an 8-bit RGB PIL image (see the module docstring)."""
    where = _describe(image)
    with decoding(where):
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                _check_pixels(opened, where, max_pixels)
                opened.seek(0)  # first frame of an animation
                rgb = _to_rgb(ImageOps.exif_transpose(opened), hf_exact)
                rgb.load()
                return rgb
        if isinstance(image, Image.Image):
            _check_pixels(image, where, max_pixels)
            return _to_rgb(image if hf_exact else ImageOps.exif_transpose(image), hf_exact)
        if isinstance(image, np.ndarray):
            return _to_rgb(_array_to_pil(image), hf_exact)
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image "
                     "or an HxWx3 uint8 array")


def _check_pixels(image: Image.Image, where: str, max_pixels: int) -> None:
    w, h = image.size
    if w * h > max_pixels:
        raise ImageError(f"{where}: {w}x{h} is {w * h:,} pixels, more than the limit of "
                         f"{max_pixels:,} (a decompression bomb?); raise ImageProcessor.max_pixels "
                         "to allow it")
    if w < 1 or h < 1:
        raise ImageError(f"{where}: image has no pixels ({w}x{h})")


def _array_to_pil(x: np.ndarray) -> Image.Image:
    if x.dtype != np.uint8:
        raise ImageError(f"image arrays must be uint8 (H, W, 3), got {x.dtype}; normalized "
                         "float input goes straight to the model as pixel_values")
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (3, 4))) or min(x.shape[:2]) < 1:
        raise ImageError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {x.shape}")
    return Image.fromarray(np.ascontiguousarray(x))


def _to_rgb(image: Image.Image, hf_exact: bool) -> Image.Image:
    """RGB; 16-bit and float greyscale scaled to 8 bits first (see the module docstring)."""
    if not hf_exact and (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        x = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and x.max() > 255):
            x = x / 257  # 0..65535 -> 0..255
        elif image.mode == "F" and x.min() >= 0 and x.max() <= 1:
            x = x * 255
        image = Image.fromarray(np.clip(np.nan_to_num(x), 0, 255).round().astype(np.uint8))
    return image.convert("RGB")
