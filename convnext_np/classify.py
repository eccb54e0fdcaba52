"""``classify``: images in, the top-k labels with softmax probabilities out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError
from .loading import ConvNeXt, from_pretrained

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
    return from_pretrained(DEFAULT_MODEL if model is None else model, backend=backend)


def iter_forward(images, model: ConvNeXt, batch_size: int = 8):
    """Yield ``(image, logits, pooled, error)`` per image, in order: the image's row of the
    model's ``logits`` and ``pooled`` (None where the model has none), or, for an image that
    cannot be read, its :class:`ImageError`, and the rest go on. Images are preprocessed by
    ``model.preprocessor`` and go through the model ``batch_size`` at a time, so at most that
    many are in memory at once. The one loop from images to outputs: classify, the CLI's
    features, fit_head's features and the Spark stage all run it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pending = []  # (image, pixel_values)

    def flush():
        out = model(np.stack([x for _, x in pending]))
        for j, (image, _) in enumerate(pending):
            yield (image, None if out.logits is None else out.logits[j],
                   None if out.pooled is None else out.pooled[j], None)
        pending.clear()

    for image in images:
        try:
            pending.append((image, model.preprocessor.preprocess(image)))
        except ImageError as e:
            yield from flush() if pending else ()
            yield image, None, None, e
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def require_head(model: ConvNeXt) -> None:
    """Raise ValueError for a model without a classification head: it has features, not labels."""
    if model.config.num_labels == 0:
        raise ValueError(f"{model.source}: this model has no classification head (a "
                         f"{model.config.model_type} feature extractor), so it cannot classify; "
                         "its features are model(pixel_values).pooled (or .feature_maps)")


def require_pooled(model: ConvNeXt) -> None:
    """Raise ValueError for a Backbone checkpoint: it has no final LayerNorm, so no pooled features."""
    if not model.config.final_norm:
        raise ValueError(f"{model.source}: a Backbone checkpoint (no final LayerNorm) has no pooled "
                         "features; its outputs are model(pixel_values).feature_maps")


def predictions(logits: np.ndarray, id2label: dict, top_k: int) -> list:
    """The ``top_k`` :class:`Prediction` s of one image's logits (K,), best first."""
    return top_k_predictions(softmax(logits), id2label, top_k)


def iter_classify(images, model: ConvNeXt, top_k: int = 5, batch_size: int = 8):
    """Yield ``(image, predictions, error)`` per image, in order; a bad image yields its
    :class:`ImageError` and the rest go on (:func:`iter_forward`)."""
    require_head(model)
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    for image, logits, _, error in iter_forward(images, model, batch_size):
        if error is not None:
            yield image, None, error
        else:
            yield image, predictions(logits, model.config.id2label, top_k), None


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
