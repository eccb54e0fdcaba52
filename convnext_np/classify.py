"""``classify``: images in, the top-k labels with softmax probabilities out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError
from .model import ConvNeXt

DEFAULT_MODEL = "facebook/convnext-tiny-224"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".ico", ".jfif"}


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float  # softmax probability


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_predictions(probs: np.ndarray, id2label: dict, k: int) -> list:
    """Best first; ties keep the lower class index first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(id2label.get(int(i), str(int(i))), int(i), float(probs[i])) for i in order]


def expand_paths(paths) -> list:
    """Files as given; directories searched recursively for image files, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def load_model(model=None, backend: str = "auto") -> ConvNeXt:
    """``model`` if it is loaded already, else ``from_pretrained(model or DEFAULT_MODEL)``."""
    if isinstance(model, ConvNeXt):
        return model
    from .loading import from_pretrained

    return from_pretrained(DEFAULT_MODEL if model is None else model, backend=backend)


def iter_classify(images, model: ConvNeXt, top_k: int = 5, batch_size: int = 8):
    """Yield ``(image, predictions, error)`` per image, in order; a bad image yields its
    :class:`ImageError` and the rest go on. At most ``batch_size`` images are in memory at once."""
    if model.config.num_labels == 0:
        raise ValueError(f"{model.source}: this model has no classification head (a "
                         f"{model.config.model_type} feature extractor), so it cannot classify; "
                         "its features are model(pixel_values).pooled (or .feature_maps)")
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    pending = []  # (image, pixel_values)

    def flush():
        probs = softmax(model(np.stack([x for _, x in pending])).logits)
        for (image, _), p in zip(pending, probs):
            yield image, top_k_predictions(p, model.config.id2label, top_k), None
        pending.clear()

    for image in images:
        try:
            pending.append((image, model.preprocessor.preprocess(image)))
        except ImageError as e:
            yield from flush() if pending else ()
            yield image, None, e
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def classify(images, model=None, top_k: int = 5, batch_size: int = 8):
    """Top-``top_k`` :class:`Prediction` s for one image, or a list of lists for a list.

    ``model`` is a loaded model or anything :func:`convnext_np.from_pretrained` takes (default
    ``facebook/convnext-tiny-224``). Images are processed in chunks of ``batch_size``. An image
    that cannot be read raises :class:`ImageError` naming it; use :func:`iter_classify` (or the
    CLI) to go on past bad images.
    """
    single = not isinstance(images, (list, tuple))
    results = []
    for _, predictions, error in iter_classify([images] if single else images,
                                               load_model(model), top_k, batch_size):
        if error is not None:
            raise error
        results.append(predictions)
    return results[0] if single else results
