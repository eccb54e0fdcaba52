"""Class names for checkpoints that carry none (timm and facebookresearch files).

``data/imagenet-1k.txt``, ``data/imagenet-12k.txt`` and ``data/imagenet-22k.txt`` hold the
WordNet lemmas of the ImageNet-1k classes, of the 11821 classes of timm's ImageNet-12k (the
``in12k`` heads) and of the 21841 ImageNet-22k classes, in logit order (written by
``data/make_labels.py`` from the lists timm ships). A checkpoint's own ``id2label`` always wins.
``data/imagenet-*-synsets.txt`` hold their WordNet ids, in the same order: the folder names of
ImageNet's train and val splits.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

LABEL_SETS = {1000: "imagenet-1k.txt", 11821: "imagenet-12k.txt", 21841: "imagenet-22k.txt"}
SYNSET_SETS = {1000: "imagenet-1k-synsets.txt", 11821: "imagenet-12k-synsets.txt",
               21841: "imagenet-22k-synsets.txt"}


@lru_cache(maxsize=None)
def _read(name: str) -> tuple:
    text = resources.files("convnext_np").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_labels(num_classes: int) -> list | None:
    """The ImageNet class names for a head of ``num_classes`` (1000, 11821 or 21841), else None."""
    name = LABEL_SETS.get(num_classes)
    return list(_read(name)) if name else None


def imagenet_synsets(num_classes: int) -> list | None:
    """The WordNet ids (``n01440764``, ...) of a head of ``num_classes`` (1000, 11821 or 21841), in
    logit order, else None."""
    name = SYNSET_SETS.get(num_classes)
    return list(_read(name)) if name else None
