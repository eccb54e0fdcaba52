"""``fit_head``: a new linear classifier on a ConvNeXt's pooled features (a linear probe).

The features are ``model(x).pooled``: global average pool, then the final LayerNorm, the input
of the classifier in every port (transformers' ``pooler_output``, timm's
``forward_head(pre_logits=True)``). Each image's features are computed once, ``batch_size``
images at a time, and can be kept in an on-disk cache (:class:`FeatureCache`), so a second
run, or one that was interrupted, computes only what is missing. Only the features (N x C
floats) are held in memory, never the images.

The head is multinomial logistic regression with an L2 penalty on the weights (not the bias),

    loss(W, b) = mean_i -log softmax(W x_i + b)[y_i] + l2 / 2 * ||W||^2,

minimised with scipy's L-BFGS and the analytic gradient; with ``l2 = 1 / n`` this is the
objective of scikit-learn's ``LogisticRegression()`` (C = 1). The result is an ordinary model
whose ``classifier`` is the fitted Linear and whose ``id2label`` names the classes;
``save_pretrained`` writes it in Hugging Face layout.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classify import iter_forward, load_model, require_pooled
from .evaluate import describe_processor, read_dataset
from .files import atomic_write
from .loading import ConvNeXt
from .preprocess import ImageProcessor, profile_processor

ROWS_PER_CHUNK = 32768  # rows of the loss computed at once: bounds the (rows, K) temporaries


# --- features -----------------------------------------------------------------------------------
def model_fingerprint(model: ConvNeXt, processor: ImageProcessor) -> str:
    """A hex digest that changes when the backbone's weights or the preprocessing change (the
    classifier is left out: the pooled features do not depend on it)."""
    digest = hashlib.sha256()

    def walk(tree, path):
        if isinstance(tree, dict):
            for key in sorted(tree):
                if path != ("head",) or not key.startswith("fc"):
                    walk(tree[key], path + (key,))
        elif isinstance(tree, (list, tuple)):
            for i, value in enumerate(tree):
                walk(value, path + (i,))
        elif tree is not None:
            array = np.ascontiguousarray(tree)
            digest.update(repr((path, array.shape, array.dtype.str)).encode())
            digest.update(array.data)

    walk(model.params, ())
    digest.update(json.dumps(dataclasses.asdict(processor), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def image_key(image) -> str | None:
    """A cache key for a file: its absolute path, size and modification time; None for an
    in-memory image (not cached)."""
    if not isinstance(image, (str, os.PathLike)):
        return None
    path = Path(image).resolve()
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"


class FeatureCache:
    """Pooled features on disk, one folder per model and preprocessing (see
    :func:`model_fingerprint`), written in parts of ``part_size`` images, each part atomically,
    so an interrupted run keeps what it had written and the next run resumes from there."""

    def __init__(self, directory, fingerprint: str, part_size: int = 256, info: dict | None = None):
        from safetensors import safe_open

        self.directory = Path(directory) / fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self.part_size, self.rows, self._pending = part_size, {}, []
        if info is not None and not (self.directory / "info.json").is_file():
            atomic_write(self.directory / "info.json",
                         lambda p: Path(p).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"))
        for part in sorted(self.directory.glob("part-*.safetensors")):
            try:
                with safe_open(str(part), "np") as f:
                    keys = json.loads(f.metadata()["images"])
                    features = f.get_tensor("features")
            except Exception:  # noqa: BLE001 - a damaged part is recomputed, not trusted
                continue
            if len(keys) == len(features):
                self.rows.update(zip(keys, features))

    def get(self, key):
        return None if key is None else self.rows.get(key)

    def put(self, key, features: np.ndarray) -> None:
        if key is None or key in self.rows:
            return
        self.rows[key] = features
        self._pending.append(key)
        if len(self._pending) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        from safetensors.numpy import save_file

        keys, self._pending = self._pending, []
        features = np.stack([self.rows[k] for k in keys]).astype(np.float32)
        atomic_write(self.directory / f"part-{uuid.uuid4().hex}.safetensors",
                     lambda p: save_file({"features": features}, p, metadata={"images": json.dumps(keys)}))

def pooled_features(model: ConvNeXt, images, *, batch_size: int = 8, cache: FeatureCache | None = None,
                    progress=None):
    """``(features, kept, unreadable, computed)``: float32 (n, C) pooled features of the
    readable images, their positions in ``images``, ``(image, why)`` for the others, and how
    many were computed rather than read from ``cache``. ``progress`` is called once per image,
    when it is done."""
    images = list(images)
    rows, unreadable, todo = {}, [], []  # todo: (position, cache key) of the images to compute
    for i, image in enumerate(images):
        key = image_key(image) if cache is not None else None
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            todo.append((i, key))
            continue
        rows[i] = hit
        if progress is not None:
            progress()
    try:
        results = iter_forward([images[i] for i, _ in todo], model, batch_size)
        for (i, key), (image, _, pooled, error) in zip(todo, results):
            if error is not None:
                unreadable.append((image, str(error)))
            else:
                rows[i] = pooled
                if cache is not None:
                    cache.put(key, pooled)
            if progress is not None:
                progress()
    finally:  # interrupted or not, what was computed is kept for the next run
        if cache is not None:
            cache.flush()
    kept = sorted(rows)
    width = model.config.hidden_sizes[-1]
    features = np.stack([rows[i] for i in kept]) if kept else np.zeros((0, width), np.float32)
    return features.astype(np.float32, copy=False), kept, unreadable, len(todo) - len(unreadable)


# --- the classifier -----------------------------------------------------------------------------
def softmax_regression_loss(theta, x, y, num_classes: int, l2: float):
    """Loss and gradient (see the module docstring) at ``theta`` = [W (K x C) row-major, b (K)].

    log_softmax subtracts each row's maximum, so large logits do not overflow; the gradient of
    the mean cross-entropy is (softmax - onehot)^T x / n. Rows go through in chunks, so memory
    is that of ``ROWS_PER_CHUNK`` x K, whatever n is.
    """
    from scipy.special import log_softmax

    n, c = x.shape
    w, b = theta[:num_classes * c].reshape(num_classes, c), theta[num_classes * c:]
    loss, grad_w, grad_b = 0.0, np.zeros_like(w), np.zeros_like(b)
    for start in range(0, n, ROWS_PER_CHUNK):
        xc, yc = x[start:start + ROWS_PER_CHUNK].astype(np.float64), y[start:start + ROWS_PER_CHUNK]
        logp = log_softmax(xc @ w.T + b, axis=1)  # (rows, K)
        rows = np.arange(len(yc))
        loss -= logp[rows, yc].sum()
        delta = np.exp(logp)
        delta[rows, yc] -= 1.0  # softmax - onehot
        grad_w += delta.T @ xc
        grad_b += delta.sum(axis=0)
    loss = loss / n + 0.5 * l2 * np.sum(w * w)
    return loss, np.concatenate([(grad_w / n + l2 * w).ravel(), grad_b / n])


def fit_softmax_regression(x, y, num_classes: int, *, l2: float | None = None, max_iter: int = 1000,
                           tol: float = 1e-6):
    """``(W (K, C), b (K,), scipy OptimizeResult)`` minimising the loss above by L-BFGS from
    zero; ``l2`` defaults to 1/n (scikit-learn's ``C=1``)."""
    # Imported here, not with the module: scipy.optimize takes ~0.4 s to import, which every
    # `import convnext_np` (and so every start-up) would pay.
    from scipy.optimize import minimize

    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"features must be (n, C) with n labels, n > 0; got {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    l2 = 1.0 / len(x) if l2 is None else float(l2)
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    c = x.shape[1]
    result = minimize(softmax_regression_loss, np.zeros(num_classes * (c + 1)),
                      args=(x, y, num_classes, l2), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "maxcor": 20})
    w = result.x[:num_classes * c].reshape(num_classes, c)
    return w.astype(np.float32), result.x[num_classes * c:].astype(np.float32), result


def stratified_split(y, val_fraction: float, seed: int = 0):
    """Boolean mask of the validation rows: ``round(val_fraction * n_c)`` of each class's n_c,
    at least one for a class of two or more images and never all of them; seeded."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = np.asarray(y)
    rng, val = np.random.default_rng(seed), np.zeros(len(y), bool)
    if val_fraction == 0:
        return val
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        m = min(max(round(val_fraction * len(rows)), 1), len(rows) - 1)
        val[rows[:m]] = True
    return val


# --- the model ------------------------------------------------------------------------------------
@dataclass
class HeadFit:
    """How :func:`fit_head` went; ``model.fit_report`` of the model it returns."""

    labels: list  # class names, in logit order
    n_train: int
    n_val: int
    train_accuracy: float
    val_accuracy: float | None  # None without a validation split
    l2: float
    iterations: int
    converged: bool
    message: str  # the solver's
    unreadable: list  # (image, why)
    computed: int  # features computed in this run
    cached: int  # features read from the cache
    preprocessing: dict
    feature_seconds: float
    fit_seconds: float


def with_head(model: ConvNeXt, weight, bias, labels, preprocessor=None) -> ConvNeXt:
    """``model`` with a new classifier: ``weight`` (K, C) and ``bias`` (K,) as in torch's
    Linear, and ``labels`` (K names) as ``id2label``. The backbone's arrays are shared."""
    weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    labels = [str(label) for label in labels]
    c = model.config.head_hidden_size or model.config.hidden_sizes[-1]  # the width of pooled
    if weight.shape != (len(labels), c) or bias.shape != (len(labels),):
        raise ValueError(f"a head for {len(labels)} labels on {c} features needs weight "
                         f"({len(labels)}, {c}) and bias ({len(labels)},); got {weight.shape} "
                         f"and {bias.shape}")
    extra = dict(model.config.extra)
    if "architectures" in extra:  # a headless ConvNextModel becomes ...ForImageClassification
        extra["architectures"] = [a if a.endswith("ForImageClassification") else
                                  a.replace("Backbone", "Model").removesuffix("Model")
                                  + "ForImageClassification" for a in extra["architectures"]]
    config = dataclasses.replace(model.config, id2label=dict(enumerate(labels)), extra=extra)
    if config.model_type == "dinov3_convnext":  # with a head it is transformers' ConvNeXt classifier
        config = dataclasses.replace(config, model_type="convnext",
                                     extra=dict(extra, architectures=["ConvNextForImageClassification"]))
    head = {**model.params["head"], "fc_w": np.ascontiguousarray(weight.T), "fc_b": bias.copy()}
    return ConvNeXt(config, {**model.params, "head": head}, backend=model.requested_backend,
                    preprocessor=preprocessor or model.preprocessor, source=model.source,
                    num_threads=model.num_threads)


def fit_head(model, images, labels=None, *, val_fraction: float = 0.2, l2: float | None = None,
             seed: int = 0, profile: str = "model", batch_size: int = 8, cache_dir=None,
             backend: str = "auto", max_iter: int = 1000, progress=None) -> ConvNeXt:
    """A copy of ``model`` whose classifier is fitted to ``images`` and ``labels``.

    ``images`` and ``labels`` are parallel lists (paths, PIL images or uint8 arrays, and label
    strings), or ``images`` is a dataset as :func:`convnext_np.evaluate` takes (a folder of class
    folders, whose names become the labels, or a ``path,label`` CSV) and ``labels`` is None.
    Classes are the sorted distinct labels. A stratified, seeded ``val_fraction`` of each class
    is held out; the head is fitted on the rest and its validation accuracy reported in
    ``model.fit_report`` (:class:`HeadFit`). ``cache_dir``, if given, keeps the features on
    disk (:class:`FeatureCache`). Unreadable images are left out and named in the report.
    """
    model = load_model(model, backend)
    require_pooled(model)
    if labels is None:
        pairs = read_dataset(images)
        images, labels = [image for image, _ in pairs], [label for _, label in pairs]
    images, labels = list(images), [str(label) for label in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
    processor = profile_processor(profile, model.preprocessor or ImageProcessor())
    extracting = copy.copy(model)  # the same weights, preprocessed as the profile says
    extracting.preprocessor = processor
    cache = None
    if cache_dir is not None:
        cache = FeatureCache(cache_dir, model_fingerprint(model, processor),
                             info={"model": str(model.source), "preprocessing": describe_processor(processor, profile)})

    start = time.perf_counter()
    x, kept, unreadable, computed = pooled_features(extracting, images, batch_size=batch_size,
                                                    cache=cache, progress=progress)
    feature_seconds = time.perf_counter() - start
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[labels[i]] for i in kept], np.int64)
    if len(np.unique(y)) < len(classes):
        missing = sorted(set(classes) - {classes[i] for i in np.unique(y)})
        raise ValueError(f"no readable image of class(es) {', '.join(map(repr, missing))}")
    val = stratified_split(y, val_fraction, seed)

    start = time.perf_counter()
    w, b, result = fit_softmax_regression(x[~val], y[~val], len(classes), l2=l2, max_iter=max_iter)
    fit_seconds = time.perf_counter() - start

    def accuracy(rows):
        return float(np.mean(np.argmax(x[rows] @ w.T + b, axis=1) == y[rows])) if rows.any() else None

    fitted = with_head(model, w, b, classes, preprocessor=processor)
    fitted.fit_report = HeadFit(
        labels=classes, n_train=int((~val).sum()), n_val=int(val.sum()),
        train_accuracy=accuracy(~val), val_accuracy=accuracy(val),
        l2=1.0 / int((~val).sum()) if l2 is None else float(l2), iterations=int(result.nit),
        converged=bool(result.success), message=str(result.message), unreadable=unreadable,
        computed=computed, cached=len(kept) - computed,
        preprocessing=describe_processor(processor, profile), feature_seconds=feature_seconds,
        fit_seconds=fit_seconds)
    return fitted
