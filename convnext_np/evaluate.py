"""``evaluate``: the accuracy of a classifier on labelled images.

A dataset is a folder of class folders (the layout of ImageNet's train and val splits, each
folder named by a WordNet id such as ``n01440764``, or by a label of the model), a CSV file of
``path,label`` rows, or a list of ``(image, label)`` pairs. A label is a class name of the model
(``config.id2label``), a WordNet id (for a head of the 1000 ImageNet-1k or 21841 ImageNet-22k
classes), or a class index. Top-k accuracy is counted as in timm's ``accuracy``: an image is
right at k when its label is among the k highest logits. Unreadable images are counted apart,
named with the reason, and left out of the fractions.
"""

from __future__ import annotations

import copy
import csv
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .classify import expand_paths, iter_classify, load_model
from .labels import imagenet_synsets
from .preprocess import ImageProcessor, profile_processor


def read_dataset(dataset) -> list:
    """``(image, label)`` pairs of a folder of class folders, a ``path,label`` CSV file (a
    first row ``path,label`` is a header; relative paths are relative to the file), or a list of
    pairs. A bad dataset raises ValueError naming it."""
    if isinstance(dataset, (list, tuple)):
        pairs = [tuple(p) for p in dataset]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("a dataset given as a list must hold (image, label) pairs")
        return [(image, str(label)) for image, label in pairs]
    path = Path(os.fspath(dataset))
    if path.is_dir():
        classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        pairs = [(image, d.name) for d in classes for image in expand_paths([d])]
        if not pairs:
            raise ValueError(f"{path}: no class folders with images in it (expected "
                             "DATASET/<label or WordNet id>/<image>)")
        return pairs
    if path.is_file():
        return _read_csv(path)
    raise ValueError(f"{path}: no such dataset (a folder of class folders or a path,label CSV)")


def _read_csv(path: Path) -> list:
    pairs = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM is not part of "path"
            for line, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip():
                    continue
                if line == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise ValueError(f"{path}, line {line}: expected 'path,label', got {row!r}")
                image = Path(row[0].strip())
                pairs.append((image if image.is_absolute() else path.parent / image, row[1].strip()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a path,label CSV file: {e}") from None
    if not pairs:
        raise ValueError(f"{path}: no path,label rows")
    return pairs


def label_indices(labels, id2label: dict) -> list:
    """The class index of each label: a class name, else a WordNet id (ImageNet heads), else an
    index. ValueError names the labels that are none of these, or a name two classes share."""
    by_name, shared = {}, set()
    for i, name in id2label.items():
        if name in by_name:
            shared.add(name)
        by_name.setdefault(name, i)
    by_synset = {s: i for i, s in enumerate(imagenet_synsets(len(id2label)) or ())}
    out, unknown, ambiguous = [], [], []
    for label in labels:
        if label in shared:
            ambiguous.append(label)
            index = None
        elif label in by_name:
            index = by_name[label]
        elif label in by_synset:
            index = by_synset[label]
        elif label.isdigit() and int(label) < len(id2label):
            index = int(label)
        else:
            index = None
            unknown.append(label)
        out.append(index)
    problems = []
    if unknown:
        names = sorted(set(unknown))
        problems.append(f"{len(names)} label(s) are neither a class of the model, a WordNet id "
                        f"of its classes nor a class index: " + ", ".join(map(repr, names[:5]))
                        + (", ..." if len(names) > 5 else ""))
    if ambiguous:
        problems.append(f"label {sorted(set(ambiguous))[0]!r} names more than one class of the "
                        "model; use WordNet ids or class indices")
    if problems:
        raise ValueError("; ".join(problems))
    return out


def describe_processor(processor: ImageProcessor, profile: str) -> dict:
    """The preprocessing that was used, for reports."""
    return {"profile": profile, "size": processor.size, "crop_pct": processor.crop_pct,
            "crop_mode": processor.crop_mode, "resample": processor.resample,
            "image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured. Fractions are of the ``n`` images that were scored."""

    model: str
    dataset: str
    n: int  # images scored
    correct: dict  # k -> images whose label is in the top k
    per_class: dict  # label -> {"n": images, "top1": fraction, "top<k>": fraction, ...}
    confusions: list  # (label, predicted label, count), the most frequent top-1 mistakes first
    unreadable: list  # (path, why)
    preprocessing: dict
    seconds: float

    @property
    def topk(self) -> dict:
        """k -> top-k accuracy (None when no image was scored)."""
        return {k: (c / self.n if self.n else None) for k, c in self.correct.items()}

    @property
    def top1(self):
        return self.topk.get(1)

    @property
    def top5(self):
        return self.topk.get(5)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["topk"] = {str(k): v for k, v in self.topk.items()}
        d["correct"] = {str(k): v for k, v in self.correct.items()}
        d["unreadable"] = [{"image": str(p), "error": why} for p, why in self.unreadable]
        d["confusions"] = [{"label": t, "predicted": p, "count": c} for t, p, c in self.confusions]
        return d

    def format_table(self, max_classes: int = 30) -> str:
        """The report for a terminal; at most ``max_classes`` classes, the worst first."""
        pct = lambda x: "    -" if x is None else f"{100 * x:6.2f}%"  # noqa: E731
        p = self.preprocessing
        lines = [f"model:         {self.model}",
                 f"dataset:       {self.dataset} ({self.n + len(self.unreadable)} images, "
                 f"{len(self.per_class)} classes)",
                 f"preprocessing: {p['profile']}: {p['crop_mode']} at {p['size']}, crop_pct "
                 f"{p['crop_pct']}, {p['resample']}, mean {p['image_mean']}, std {p['image_std']}",
                 f"scored:        {self.n} images in {self.seconds:.1f} s"
                 + (f" ({self.n / self.seconds:.1f} images/s)" if self.seconds > 0 and self.n else "")]
        lines += [f"top-{k:<3d}        {pct(v)}  ({self.correct[k]}/{self.n})"
                  for k, v in self.topk.items()]
        if self.unreadable:
            lines.append(f"unreadable:    {len(self.unreadable)}")
            lines += [f"  {why}" for _, why in self.unreadable]
        ks = list(self.correct)
        rows = sorted(self.per_class.items(), key=lambda kv: (kv[1]["top1"], kv[0]))
        shown = rows[:max_classes]
        title = "per class" if len(shown) == len(rows) else \
            f"per class, the {len(shown)} worst of {len(rows)} (--format json lists all)"
        width = max([len(title)] + [len(label) + 2 for label, _ in shown])
        lines.append("")
        lines.append(f"{title:<{width}s} {'n':>6s}" + "".join(f" {'top-' + str(k):>7s}" for k in ks))
        for label, c in shown:
            lines.append(f"  {label:<{width - 2}s} {c['n']:>6d}"
                         + "".join(f" {pct(c[f'top{k}'])}" for k in ks))
        if self.confusions:
            lines.append("")
            lines.append("most frequent mistakes (label -> top-1 prediction: images)")
            lines += [f"  {t} -> {p}: {c}" for t, p, c in self.confusions]
        return "\n".join(lines)


def evaluate(dataset, model=None, top_k=(1, 5), *, profile: str = "model", batch_size: int = 8,
             backend: str = "auto", progress=None, max_confusions: int = 10) -> EvaluationReport:
    """Top-k accuracy of ``model`` on a labelled ``dataset`` (see the module docstring).

    ``model`` is a loaded model or anything :func:`convnext_np.from_pretrained` takes.
    ``profile`` names the preprocessing (:data:`convnext_np.preprocess.PROFILES`: ``"model"``,
    the checkpoint's own, or ``"hf"``, ``"center"``/``"timm"``, ``"squash"``, ``"tfhub"``).
    ``progress``, if given, is called once per image. Images go through the model
    ``batch_size`` at a time, so memory does not grow with the dataset.
    """
    ks = sorted({int(k) for k in (top_k if isinstance(top_k, (list, tuple, set)) else (top_k,))})
    if not ks or ks[0] < 1:
        raise ValueError(f"top_k must be positive integers, got {top_k!r}")
    model = load_model(model, backend)
    id2label = model.config.id2label
    if not id2label:
        raise ValueError(f"{model.source}: this model has no classification head")
    pairs = read_dataset(dataset)
    targets = label_indices([label for _, label in pairs], id2label)
    processor = profile_processor(profile, model.preprocessor or ImageProcessor())
    scoring = copy.copy(model)  # the same weights, preprocessed as the profile says
    scoring.preprocessor = processor

    start = time.perf_counter()
    correct, unreadable, confused = Counter({k: 0 for k in ks}), [], Counter()
    per_class = {}
    results = iter_classify([image for image, _ in pairs], scoring, min(ks[-1], len(id2label)),
                            batch_size)
    for (image, predictions, error), target in zip(results, targets):
        if progress is not None:
            progress()
        if error is not None:
            unreadable.append((image, str(error)))
            continue
        label = id2label[target]
        counts = per_class.setdefault(label, Counter())
        counts["n"] += 1
        rank = next((r for r, p in enumerate(predictions) if p.index == target), None)
        for k in ks:
            hit = rank is not None and rank < k
            correct[k] += hit
            counts[k] += hit
        if predictions[0].index != target:
            confused[label, predictions[0].label] += 1
    n = sum(c["n"] for c in per_class.values())
    return EvaluationReport(
        model=str(model.source), dataset=str(dataset) if not isinstance(dataset, (list, tuple))
        else f"{len(pairs)} (image, label) pairs", n=n, correct=dict(correct),
        per_class={label: {"n": c["n"], **{f"top{k}": c[k] / c["n"] for k in ks}}
                   for label, c in sorted(per_class.items())},
        confusions=[(t, p, c) for (t, p), c in sorted(confused.items(),
                                                      key=lambda kv: (-kv[1], kv[0]))][:max_confusions],
        unreadable=unreadable, preprocessing=describe_processor(processor, profile),
        seconds=time.perf_counter() - start)
