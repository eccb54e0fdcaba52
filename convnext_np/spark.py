"""``ImageClassifier``: a pyspark.ml Transformer that classifies image DataFrames.

The Spark NLP pipeline ``ImageAssembler -> ConvNextForImageClassification``,
done with this library on the executors' Python workers: no JVM-side model, no TensorFlow.

    from pyspark.ml import Pipeline
    from convnext_np.spark import ImageClassifier

    df = spark.read.format("binaryFile").load("s3://bucket/photos/")     # or format("image")
    clf = ImageClassifier(modelPath="/models/convnext-tiny-224", inputCol="content", topK=3)
    Pipeline(stages=[clf]).fit(df).transform(df).select("path", "predictions", "error")

Input column: ``binaryFile`` ``content`` (the encoded file, decoded with PIL, so every row
gets exactly what :func:`convnext_np.classify` gives for the same file) or the ``image`` data
source struct (pixels decoded by Java ImageIO, BGR(A) byte order, 1, 3 or 4 channels).
Output: ``outputCol`` is ``array<struct<label: string, index: int, score: float>>``, best
first; ``errorCol`` is null, or the message for a row that could not be decoded (whose
``outputCol`` is null); ``embeddingCol``, when set, is the pooled features
(``model(...).pooled``, ``array<float>``) from the same forward pass.

``outputMode="annotations"`` shapes ``outputCol`` as Spark NLP's image classifiers do (its
``Annotation`` struct: ``annotatorType`` "category", ``begin`` 0, ``end`` len(label) - 1,
``result`` the top-1 label, ``metadata`` map<string,string>, ``embeddings`` array<float>,
empty), so a pipeline written for Spark NLP's ``ConvNextForImageClassification`` with
``setOutputCol("class")`` selects ``class.result`` unchanged. ``metadata`` holds the softmax
probability of every class, keyed by its label (a label that names two classes is keyed
``"<label> (<index>)"`` for each), written as Spark NLP writes floats; Spark NLP itself keys only
ten of them correctly.

``outputMode="embeddings"`` makes ``outputCol`` the pooled features (``array<float>``) and
classifies nothing, so it also serves checkpoints without a classification head (timm's FCMAE
encoders, DINOv3 ConvNeXt, any ``num_labels`` 0 model); a Backbone checkpoint has no pooled
features and is refused.

Execution is ``mapInArrow``: each Arrow batch goes through
:func:`convnext_np.classify.iter_forward` in chunks of ``batchSize``. Each Python worker
loads the model once (a module-level cache), from the path on the executor's disk, and uses
``spark.task.cpus`` threads. See ``docs/spark.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import math
import os
import threading
from collections import Counter

try:
    from pyspark import keyword_only
    from pyspark.ml import Transformer
    from pyspark.ml.param import Param, Params, TypeConverters
    from pyspark.ml.param.shared import HasInputCol, HasOutputCol
    from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
    from pyspark.sql import types as T
except ImportError as e:  # pragma: no cover - only without the extra
    raise ImportError("convnext_np.spark needs pyspark, pyarrow and pandas: "
                      "pip install 'convnext-np[spark]'") from e

import numpy as np

from .backends import BACKENDS
from .classify import DEFAULT_MODEL, iter_forward, predictions, require_head, require_pooled
from .errors import ImageError
from .guards import decoding
from .loading import ConvNeXt, from_pretrained
from .model import MIN_INPUT_SIZE
from .preprocess import ImageProcessor

__all__ = ["ImageClassifier", "PREDICTION_TYPE", "spark_image_to_array"]

PREDICTION_TYPE = T.ArrayType(T.StructType([
    T.StructField("label", T.StringType()),
    T.StructField("index", T.IntegerType()),
    T.StructField("score", T.FloatType()),
]))
EMBEDDING_TYPE = T.ArrayType(T.FloatType())
# Spark NLP's Annotation (com.johnsnowlabs.nlp.Annotation.dataType), for outputMode="annotations".
ANNOTATION_TYPE = T.ArrayType(T.StructType([
    T.StructField("annotatorType", T.StringType()),
    T.StructField("begin", T.IntegerType(), nullable=False),
    T.StructField("end", T.IntegerType(), nullable=False),
    T.StructField("result", T.StringType()),
    T.StructField("metadata", T.MapType(T.StringType(), T.StringType())),
    T.StructField("embeddings", T.ArrayType(T.FloatType(), containsNull=False)),
]))
OUTPUT_MODES = ("predictions", "annotations", "embeddings")

# Spark's image data source: OpenCV type codes of the 8-bit modes it writes, and channels.
OCV_CHANNELS = {0: 1, 16: 3, 24: 4}  # CV_8UC1, CV_8UC3, CV_8UC4
IMAGE_FIELDS = ("height", "width", "nChannels", "data")

# ImageClassifier param -> ImageProcessor field (Spark NLP's param names).
PREPROCESSING_PARAMS = {
    "size": "size", "cropPct": "crop_pct", "resample": "resample", "imageMean": "image_mean",
    "imageStd": "image_std", "cropMode": "crop_mode", "doResize": "do_resize",
    "doRescale": "do_rescale", "rescaleFactor": "rescale_factor", "doNormalize": "do_normalize",
}


def _to_resample(value):
    """PIL's int code (Spark NLP's ``resample 3``) or a name (``"bicubic"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"resample must be an int (PIL code) or a name, got {value!r}")
    return value


class ImageClassifier(Transformer, HasInputCol, HasOutputCol,
                      DefaultParamsReadable, DefaultParamsWritable):
    """Classify the images of a DataFrame column with a ConvNeXt (see the module docstring).

    Preprocessing params (``size``, ``cropPct``, ``resample``, ``imageMean``, ``imageStd``,
    ``cropMode``, ``doResize``, ``doRescale``, ``rescaleFactor``, ``doNormalize``) are
    overrides: unset, the checkpoint's ``preprocessor_config.json`` (or timm config) decides.
    """

    modelPath = Param(Params._dummy(), "modelPath",
                      "anything convnext_np.from_pretrained takes, as seen from the executors "
                      "(a shared path, or a name shipped with --files/--archives)",
                      TypeConverters.toString)
    errorCol = Param(Params._dummy(), "errorCol",
                     "column for the error message of a row that could not be classified "
                     "(null when it was)", TypeConverters.toString)
    embeddingCol = Param(Params._dummy(), "embeddingCol",
                         "if set, a column of pooled features (array<float>) from the same pass",
                         TypeConverters.toString)
    topK = Param(Params._dummy(), "topK", "labels per row, best first", TypeConverters.toInt)
    batchSize = Param(Params._dummy(), "batchSize", "images per forward pass", TypeConverters.toInt)
    backend = Param(Params._dummy(), "backend", "'auto' or a convnext_np backend name",
                    TypeConverters.toString)
    outputMode = Param(Params._dummy(), "outputMode",
                       "'predictions' (label, index, score; topK of them), 'annotations' "
                       "(Spark NLP's Annotation: result = label, metadata = every label's score) "
                       "or 'embeddings' (the pooled features; for models without a head too)",
                       TypeConverters.toString)
    dropInvalid = Param(Params._dummy(), "dropInvalid",
                        "drop rows that cannot be decoded instead of returning their error",
                        TypeConverters.toBoolean)
    size = Param(Params._dummy(), "size", "preprocessing override: input side", TypeConverters.toInt)
    cropPct = Param(Params._dummy(), "cropPct", "preprocessing override: crop_pct",
                    TypeConverters.toFloat)
    resample = Param(Params._dummy(), "resample",
                     "preprocessing override: PIL resample code (3 = bicubic) or name", _to_resample)
    imageMean = Param(Params._dummy(), "imageMean", "preprocessing override: per-channel mean",
                      TypeConverters.toListFloat)
    imageStd = Param(Params._dummy(), "imageStd", "preprocessing override: per-channel std",
                     TypeConverters.toListFloat)
    cropMode = Param(Params._dummy(), "cropMode", "preprocessing override: hf, center, squash or tf",
                     TypeConverters.toString)
    doResize = Param(Params._dummy(), "doResize", "preprocessing override", TypeConverters.toBoolean)
    doRescale = Param(Params._dummy(), "doRescale", "preprocessing override", TypeConverters.toBoolean)
    rescaleFactor = Param(Params._dummy(), "rescaleFactor", "preprocessing override",
                          TypeConverters.toFloat)
    doNormalize = Param(Params._dummy(), "doNormalize", "preprocessing override",
                        TypeConverters.toBoolean)

    @keyword_only
    def __init__(self, *, modelPath=DEFAULT_MODEL, inputCol="image", outputCol="predictions",
                 errorCol="error", embeddingCol=None, topK=5, batchSize=8, backend="auto",
                 dropInvalid=False, size=None, cropPct=None, resample=None, imageMean=None,
                 imageStd=None, cropMode=None, doResize=None, doRescale=None, rescaleFactor=None,
                 doNormalize=None, outputMode="predictions"):
        super().__init__()
        self._setDefault(modelPath=DEFAULT_MODEL, inputCol="image", outputCol="predictions",
                         errorCol="error", topK=5, batchSize=8, backend="auto", dropInvalid=False,
                         outputMode="predictions")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, modelPath=DEFAULT_MODEL, inputCol="image", outputCol="predictions",
                  errorCol="error", embeddingCol=None, topK=5, batchSize=8, backend="auto",
                  dropInvalid=False, size=None, cropPct=None, resample=None, imageMean=None,
                  imageStd=None, cropMode=None, doResize=None, doRescale=None, rescaleFactor=None,
                  doNormalize=None, outputMode="predictions"):
        # None means "not set" (the checkpoint's preprocessing, no embedding column).
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    # --- setters and getters, Spark ML style -----------------------------------------------------
    def setModelPath(self, value): return self._set(modelPath=value)
    def setInputCol(self, value): return self._set(inputCol=value)
    def setOutputCol(self, value): return self._set(outputCol=value)
    def setErrorCol(self, value): return self._set(errorCol=value)
    def setEmbeddingCol(self, value): return self._set(embeddingCol=value)
    def setTopK(self, value): return self._set(topK=value)
    def setBatchSize(self, value): return self._set(batchSize=value)
    def setBackend(self, value): return self._set(backend=value)
    def setDropInvalid(self, value): return self._set(dropInvalid=value)
    def setOutputMode(self, value): return self._set(outputMode=value)
    def setSize(self, value): return self._set(size=value)
    def setCropPct(self, value): return self._set(cropPct=value)
    def setResample(self, value): return self._set(resample=value)
    def setImageMean(self, value): return self._set(imageMean=value)
    def setImageStd(self, value): return self._set(imageStd=value)
    def setCropMode(self, value): return self._set(cropMode=value)
    def setDoResize(self, value): return self._set(doResize=value)
    def setDoRescale(self, value): return self._set(doRescale=value)
    def setRescaleFactor(self, value): return self._set(rescaleFactor=value)
    def setDoNormalize(self, value): return self._set(doNormalize=value)

    def getModelPath(self): return self.getOrDefault(self.modelPath)
    def getErrorCol(self): return self.getOrDefault(self.errorCol)
    def getEmbeddingCol(self):
        return self.getOrDefault(self.embeddingCol) if self.isDefined(self.embeddingCol) else None
    def getTopK(self): return self.getOrDefault(self.topK)
    def getBatchSize(self): return self.getOrDefault(self.batchSize)
    def getBackend(self): return self.getOrDefault(self.backend)
    def getDropInvalid(self): return self.getOrDefault(self.dropInvalid)
    def getOutputMode(self): return self.getOrDefault(self.outputMode)

    def preprocessingOverrides(self) -> dict:
        """The set preprocessing params, as :class:`~convnext_np.ImageProcessor` keyword arguments."""
        return {field: self.getOrDefault(getattr(self, name))
                for name, field in PREPROCESSING_PARAMS.items() if self.isSet(getattr(self, name))}

    # --- the transform ---------------------------------------------------------------------------
    def _transform(self, dataset):
        schema = dataset.schema
        input_col = self.getInputCol()
        if input_col not in schema.names:
            hint = {"content": " (a binaryFile DataFrame: setInputCol('content'))",
                    "image": " (an image data source DataFrame: setInputCol('image'))"}
            raise ValueError(f"ImageClassifier: no column {input_col!r} in {schema.names}"
                             + next((h for c, h in hint.items() if c in schema.names), ""))
        kind = _input_kind(schema[input_col].dataType, input_col)
        if self.getOutputMode() not in OUTPUT_MODES:
            raise ValueError(f"ImageClassifier: outputMode must be one of {OUTPUT_MODES}, got "
                             f"{self.getOutputMode()!r}")
        mode = self.getOutputMode()
        if mode == "embeddings" and self.getEmbeddingCol():
            raise ValueError("ImageClassifier: with outputMode='embeddings' the pooled features are "
                             "outputCol; leave embeddingCol unset")
        output_type = {"predictions": PREDICTION_TYPE, "annotations": ANNOTATION_TYPE,
                       "embeddings": EMBEDDING_TYPE}[mode]
        new_fields = [T.StructField(self.getOutputCol(), output_type),
                      T.StructField(self.getErrorCol(), T.StringType())]
        if self.getEmbeddingCol():
            new_fields.append(T.StructField(self.getEmbeddingCol(), EMBEDDING_TYPE))
        names = [f.name for f in new_fields]
        clash = [n for n in names if n in schema.names] or [n for n in names if names.count(n) > 1]
        if clash:
            raise ValueError(f"ImageClassifier: output column {clash[0]!r} already exists or is "
                             "named twice; choose other outputCol/errorCol/embeddingCol names")
        if self.getTopK() < 1 or self.getBatchSize() < 1:
            raise ValueError(f"ImageClassifier: topK and batchSize must be at least 1, got "
                             f"{self.getTopK()} and {self.getBatchSize()}")
        if self.getBackend() != "auto" and self.getBackend() not in BACKENDS:
            raise ValueError(f"ImageClassifier: unknown backend {self.getBackend()!r}; choose "
                             f"'auto' or one of {sorted(BACKENDS)}")
        overrides = self.preprocessingOverrides()
        ImageProcessor(**overrides)  # invalid overrides fail here, on the driver
        if overrides.get("size", MIN_INPUT_SIZE) < MIN_INPUT_SIZE:
            raise ValueError(f"ImageClassifier: size must be at least {MIN_INPUT_SIZE}, got "
                             f"{overrides['size']}")

        path_col = "path" if kind == "binary" and "path" in schema.names else None
        settings = _Settings(
            model_path=self.getModelPath(), backend=self.getBackend(),
            overrides=tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                   for k, v in overrides.items())),
            kind=kind, input_index=schema.names.index(input_col),
            path_index=None if path_col is None else schema.names.index(path_col),
            top_k=self.getTopK(), batch_size=self.getBatchSize(),
            embedding=bool(self.getEmbeddingCol()), drop_invalid=self.getDropInvalid(),
            new_names=tuple(names), mode=mode)
        # functools.partial of a module-level function: cloudpickle sends it by reference, so
        # the workers use this module's cache rather than a pickled copy of it.
        return dataset.mapInArrow(functools.partial(_classify_batches, settings),
                                  T.StructType(schema.fields + new_fields))


def _input_kind(dtype, name) -> str:
    if isinstance(dtype, T.BinaryType):
        return "binary"
    if isinstance(dtype, T.StructType) and all(f in dtype.names for f in IMAGE_FIELDS):
        return "image"
    raise ValueError(f"ImageClassifier: column {name!r} is {dtype.simpleString()}; expected the "
                     "binaryFile 'content' (binary) or the image data source struct "
                     f"(with fields {', '.join(IMAGE_FIELDS)})")


# --- executor side ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Settings:
    """What a task needs: small and picklable (no Params, no SparkContext)."""

    model_path: str
    backend: str
    overrides: tuple  # sorted (ImageProcessor field, value) pairs
    kind: str  # "binary" or "image"
    input_index: int
    path_index: int | None  # binaryFile's "path" column, to name a bad file
    top_k: int
    batch_size: int
    embedding: bool
    drop_invalid: bool
    new_names: tuple  # outputCol, errorCol[, embeddingCol]
    mode: str = "predictions"  # outputMode


# The models of this Python worker process, by (model path, backend, preprocessing overrides).
# Spark reuses its Python workers across tasks and jobs (spark.python.worker.reuse, default
# true), so each worker loads the weights once, from the memory-mapped file on its executor's
# disk; nothing goes through the driver. Entries that differ only in their overrides share one
# set of parameters.
_MODELS: dict = {}
_LOADS: dict = {}  # (model path, backend) -> times loaded in this process (for tests)
_LOCK = threading.Lock()


def _resolve_model_path(model_path: str) -> str:
    """The path as given if it exists here, else a file or directory shipped with
    ``--files``/``--archives``/``SparkContext.addFile`` of that name, else the name as is."""
    if os.path.exists(os.path.expanduser(model_path)):
        return model_path
    try:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(model_path)
        if os.path.exists(shipped):
            return shipped
    except Exception:  # no SparkFiles root outside a Spark task
        pass
    return model_path


def _get_model(model_path: str, backend: str = "auto", overrides=()):
    """The cached model for ``(model_path, backend, overrides)``, loaded on first use."""
    key = (model_path, backend, tuple(overrides))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        base_key = (model_path, backend, ())
        if base_key not in _MODELS:
            _MODELS[base_key] = from_pretrained(_resolve_model_path(model_path), backend=backend)
            _LOADS[base_key[:2]] = _LOADS.get(base_key[:2], 0) + 1
        model = base = _MODELS[base_key]
        if overrides:
            processor = dataclasses.replace(base.preprocessor or ImageProcessor(), **dict(overrides))
            model = ConvNeXt(base.config, base.params, backend=backend,
                             preprocessor=processor, source=base.source)
        _MODELS[key] = model
        return model


def _task_cpus() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    try:
        return max(1, math.ceil(ctx.cpus())) if ctx is not None else 1  # may be fractional
    except Exception:
        return int(os.environ.get("OMP_NUM_THREADS", "1") or 1)


def spark_image_to_array(height, width, n_channels, mode, data) -> np.ndarray:
    """An image data source row (``spark.read.format("image")``) as a uint8 array in RGB(A)
    order: (H, W) for 1 channel, (H, W, 3) or (H, W, 4); a view of ``data`` where possible.

    Spark stores the pixels row-major, in OpenCV's BGR(A) order; ``mode`` is the OpenCV type
    (0, 16 or 24 for 1, 3 or 4 channels of 8 bits).
    """
    if data is None or height is None or width is None or n_channels is None \
            or height < 1 or width < 1 or len(data) == 0:
        raise ImageError("the image data source could not decode this file (no pixels); read it "
                         "with format('binaryFile') to see PIL's error")
    if mode is not None and mode not in OCV_CHANNELS:
        raise ImageError(f"unsupported OpenCV image type {mode}; expected 8-bit with 1, 3 or 4 "
                         "channels (mode 0, 16 or 24)")
    if n_channels not in (1, 3, 4) or (mode is not None and OCV_CHANNELS[mode] != n_channels):
        raise ImageError(f"nChannels {n_channels} does not fit mode {mode}; expected 1, 3 or 4")
    if len(data) != height * width * n_channels:
        raise ImageError(f"data has {len(data)} bytes, but {height}x{width}x{n_channels} needs "
                         f"{height * width * n_channels}")
    x = np.frombuffer(data, np.uint8).reshape(height, width, n_channels)
    if n_channels == 1:
        return x[..., 0]
    return x[..., [2, 1, 0, 3]] if n_channels == 4 else x[..., ::-1]  # BGR(A) -> RGB(A)


def _open_encoded(content: bytes):
    """A PIL image for encoded bytes (only the header is read here; pixels decode later in
    the preprocessor, after its pixel-count check)."""
    from PIL import Image

    with decoding(None):
        return Image.open(io.BytesIO(content))


def _where(settings, batch, i) -> str:
    if settings.kind == "image":
        origin = batch.column(settings.input_index)[i]
        origin = origin["origin"].as_py() if origin.is_valid and "origin" in \
            [f.name for f in origin.type] else None
        return origin or f"row {i} of its batch"
    if settings.path_index is not None:
        return batch.column(settings.path_index)[i].as_py() or f"row {i} of its batch"
    return f"row {i} of its batch"


def _decode(settings, column, i):
    value = column[i]
    if not value.is_valid:
        raise ImageError("no image (null)")
    if settings.kind == "binary":
        return _open_encoded(value.as_buffer())
    data = value["data"]
    mode = value["mode"].as_py() if "mode" in [f.name for f in value.type] else None
    with decoding(None):  # a row of unexpected types is that row's error, not the job's
        return spark_image_to_array(value["height"].as_py(), value["width"].as_py(),
                                    value["nChannels"].as_py(), mode,
                                    data.as_buffer() if data.is_valid else None)


def _message(error, image, where: str) -> str:
    msg = str(error)
    prefix = f"{type(image).__name__}: "  # load_rgb names an in-memory image by its type
    if image is not None and msg.startswith(prefix):
        msg = msg[len(prefix):]
    return msg if msg.startswith(where) else f"{where}: {msg}"


def _classify_batch(settings, model, batch):
    """One Arrow record batch in, the same rows (or the valid ones) plus the new columns out."""
    import pyarrow as pa

    n = batch.num_rows
    column = batch.column(settings.input_index)
    outputs, errors, embeddings = [None] * n, [None] * n, [None] * n
    fed = []  # row of each image handed to iter_forward, in order

    def images():
        for i in range(n):
            try:
                image = _decode(settings, column, i)
            except ImageError as e:
                errors[i] = _message(e, None, _where(settings, batch, i))
                continue
            fed.append(i)
            yield image

    annotations = settings.mode == "annotations"
    top_k = model.config.num_labels if annotations else settings.top_k
    keys = _metadata_keys(model.config.id2label) if annotations else None
    results = iter_forward(images(), model, settings.batch_size)
    for k, (image, logits, pooled, error) in enumerate(results):
        i = fed[k]
        if error is not None:
            errors[i] = _message(error, image, _where(settings, batch, i))
            continue
        if settings.mode == "embeddings":
            outputs[i] = pooled
            continue
        preds = predictions(logits, model.config.id2label, top_k)
        if annotations:
            outputs[i] = [annotation(preds, keys)]
        else:
            outputs[i] = [{"label": p.label, "index": p.index, "score": p.score} for p in preds]
        if settings.embedding:
            embeddings[i] = pooled

    output_type = {"predictions": _arrow_prediction_type, "annotations": _arrow_annotation_type,
                   "embeddings": _arrow_embedding_type}[settings.mode]()
    arrays = [pa.array(outputs, type=output_type),
              pa.array(errors, type=pa.string())]
    if settings.embedding:
        arrays.append(pa.array(embeddings, type=_arrow_embedding_type()))
    out = pa.RecordBatch.from_arrays(
        list(batch.columns) + arrays,
        names=list(batch.schema.names) + list(settings.new_names))
    if settings.drop_invalid:
        out = out.filter(pa.array([e is None for e in errors]))
    return out


def _arrow_embedding_type():
    import pyarrow as pa

    return pa.list_(pa.float32())  # float32 rows, or None for a row that failed


def _arrow_prediction_type():
    import pyarrow as pa

    return pa.list_(pa.struct([pa.field("label", pa.string()), pa.field("index", pa.int32()),
                               pa.field("score", pa.float32())]))


def _metadata_keys(id2label) -> tuple:
    """The metadata key of each class: its label, or ``"<label> (<index>)"`` for a label that
    two or more classes share (ImageNet-1k has two "crane" classes, the bird and the machine)."""
    labels = [id2label[i] for i in range(len(id2label))]
    shared = {label for label, n in Counter(labels).items() if n > 1}
    return tuple(f"{label} ({i})" if label in shared else label for i, label in enumerate(labels))


def annotation(predictions, keys) -> dict:
    """One Spark NLP ``category`` annotation from the predictions of every class, best first;
    ``keys`` are the metadata keys by class index. Scores are strings, as Spark NLP writes them
    (``score.toString``): the shortest decimal that reads back as the same float32."""
    best = predictions[0].label
    return {"annotatorType": "category", "begin": 0, "end": len(best) - 1, "result": best,
            "metadata": {keys[p.index]: _java_float(p.score) for p in predictions},
            "embeddings": []}


def _java_float(x: float) -> str:
    """A float32 in the notation of Java's Float.toString: plain for 10^-3 <= |x| < 10^7
    (``0.25``, ``1.0``), else ``d.dddE<exp>`` (``1.5E-4``); the shortest round-tripping digits."""
    x = np.float32(x)
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        text = np.format_float_positional(x, unique=True, trim="0")
        return text + "0" if text.endswith(".") else text
    mantissa, exponent = np.format_float_scientific(x, unique=True, trim="0").split("e")
    mantissa = mantissa + "0" if mantissa.endswith(".") else mantissa
    return f"{mantissa}E{int(exponent)}"


def _arrow_annotation_type():
    import pyarrow as pa

    return pa.list_(pa.struct([
        pa.field("annotatorType", pa.string()), pa.field("begin", pa.int32(), nullable=False),
        pa.field("end", pa.int32(), nullable=False), pa.field("result", pa.string()),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
        pa.field("embeddings", pa.list_(pa.field("element", pa.float32(), nullable=False)))]))


def _classify_batches(settings, batches):
    """The mapInArrow function: runs in the executor's Python worker, once per partition."""
    model = _get_model(settings.model_path, settings.backend, settings.overrides)
    (require_pooled if settings.mode == "embeddings" else require_head)(model)
    # The cached model, run on this task's spark.task.cpus threads: its BLAS or Numba count is
    # set for each call and restored after it (convnext_np.threads), whichever backend serves.
    model = copy.copy(model)
    model.num_threads = _task_cpus()
    for batch in batches:
        if batch.num_rows:
            yield _classify_batch(settings, model, batch)
