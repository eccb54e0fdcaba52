"""convnext_np.spark.ImageClassifier on a real local Spark (local[2]): both input sources give
what cnp.classify gives, bad rows get an error instead of failing the job, pipelines save and
load, and each Python worker loads the model once."""

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyspark")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")  # pyspark's mapInArrow checks for it
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java (none on PATH, JAVA_HOME unset)", allow_module_level=True)

import convnext_np as cnp  # noqa: E402
from conftest import ALL_IMAGES, FIXTURES, IMAGE_DIR  # noqa: E402
from convnext_np.spark import ImageClassifier, spark_image_to_array  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")

MODEL = str(FIXTURES / "hf-safetensors")
FAMILY = FIXTURES.parent / "family"
PNGS = [p for p in ALL_IMAGES if p.suffix == ".png"]
THREE_PNGS = [IMAGE_DIR / name for name in ("camera.png", "chelsea.png", "coffee.png")]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("convnext_np-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(MODEL, backend="numpy")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The test images and a file that claims to be a PNG but is not one."""
    d = tmp_path_factory.mktemp("images")
    for p in ALL_IMAGES:
        shutil.copy(p, d / p.name)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return d


def assert_same_predictions(rows, predictions):
    """Same labels in the same order; scores to float32 rounding. (Not bit-identical: a Spark
    task runs BLAS with spark.task.cpus threads, this process with one per core, and the
    summation order follows the thread count.)"""
    assert [(r.label, r["index"]) for r in rows] == [(p.label, p.index) for p in predictions]
    assert [r.score for r in rows] == pytest.approx([p.score for p in predictions], rel=0, abs=1e-6)


def by_name(rows, key):
    return {Path(r[key].removeprefix("file:").lstrip("/")).name: r for r in rows}


def test_binary_file_equals_classify_and_a_bad_file_gets_an_error(spark, model, image_dir):
    df = spark.read.format("binaryFile").load(str(image_dir))
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", topK=3, batchSize=2,
                          backend="numpy", embeddingCol="embedding")
    rows = by_name(clf.transform(df).select("path", "predictions", "error", "embedding").collect(),
                   "path")
    assert sorted(rows) == sorted([p.name for p in ALL_IMAGES] + ["broken.png"])
    for p in ALL_IMAGES:
        row = rows[p.name]
        assert row.error is None
        assert_same_predictions(row.predictions, cnp.classify(p, model=model, top_k=3))
        pooled = model(model.preprocessor(p)).pooled[0]
        np.testing.assert_allclose(np.array(row.embedding, np.float32), pooled, rtol=0, atol=1e-5,
                                   strict=True)
    bad = rows["broken.png"]
    assert bad.predictions is None and bad.embedding is None
    assert "broken.png" in bad.error and "cannot read image" in bad.error


def test_a_dds_under_a_png_name_is_its_rows_error_not_a_failed_job(spark, tmp_path):
    from test_untrusted_inputs import dds_header  # Pillow raises NotImplementedError on it

    shutil.copy(IMAGE_DIR / "camera.png", tmp_path / "good.png")
    (tmp_path / "photo.png").write_bytes(dds_header())
    df = spark.read.format("binaryFile").load(str(tmp_path))
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", topK=1, backend="numpy")
    rows = by_name(clf.transform(df).collect(), "path")
    assert rows["good.png"].error is None and len(rows["good.png"].predictions) == 1
    assert rows["photo.png"].predictions is None
    assert "photo.png" in rows["photo.png"].error and "NotImplementedError" in rows["photo.png"].error


def test_batches_drop_invalid_and_column_names(spark, model, image_dir):
    df = spark.read.format("binaryFile").load(str(image_dir)).repartition(1)
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", outputCol="classes",
                          errorCol="why", topK=10, batchSize=4, dropInvalid=True,
                          backend="numpy")
    out = clf.transform(df)
    assert out.columns == df.columns + ["classes", "why"]
    rows = by_name(out.collect(), "path")
    assert sorted(rows) == sorted(p.name for p in ALL_IMAGES)  # broken.png dropped
    expected = cnp.classify(ALL_IMAGES, model=model, top_k=10, batch_size=4)
    for p, preds in zip(ALL_IMAGES, expected):
        got = rows[p.name].classes
        assert rows[p.name].why is None
        assert_same_predictions(got, preds)
        assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)


def test_image_source_png_equals_classify(spark, model, image_dir):
    df = spark.read.format("image").load(str(image_dir))
    channels = {name: r.n for name, r in by_name(
        df.selectExpr("image.origin AS name", "image.nChannels AS n").collect(), "name").items()}
    assert {channels["camera.png"], channels["logo.png"], channels["chelsea.png"]} == {1, 4, 3}
    clf = ImageClassifier(modelPath=MODEL, topK=3, backend="numpy")
    rows = by_name(clf.transform(df).select("image.origin", "predictions", "error").collect(),
                   "origin")
    for p in PNGS:
        assert rows[p.name].error is None
        assert_same_predictions(rows[p.name].predictions, cnp.classify(p, model=model, top_k=3))
    # JPEG goes through Java ImageIO's decoder: classified, but not PIL's pixels (docs/spark.md)
    assert rows["rocket.jpg"].error is None and len(rows["rocket.jpg"].predictions) == 3
    # the image source keeps a row for a file it cannot decode (dropInvalid=false)
    assert rows["broken.png"].predictions is None
    assert "broken.png" in rows["broken.png"].error and "binaryFile" in rows["broken.png"].error


def test_binary_content_gives_the_pixel_values_of_the_path(model):
    from convnext_np.spark import _open_encoded

    for p in ALL_IMAGES:
        np.testing.assert_array_equal(model.preprocessor.preprocess(_open_encoded(p.read_bytes())),
                                      model.preprocessor.preprocess(p), strict=True)


def test_image_struct_is_pils_pixels_for_png(spark, model, image_dir):
    from PIL import Image

    rows = spark.read.format("image").load([str(image_dir / p.name) for p in PNGS]).collect()
    assert len(rows) == len(PNGS)
    for r in rows:
        im = r.image
        x = spark_image_to_array(im.height, im.width, im.nChannels, im.mode, im.data)
        path = Path(im.origin.removeprefix("file://"))
        with Image.open(path) as pil:
            np.testing.assert_array_equal(x, np.asarray(pil), strict=True)
        np.testing.assert_array_equal(model.preprocessor.preprocess(x),
                                      model.preprocessor.preprocess(path), strict=True)


def test_spark_image_to_array_checks_its_input():
    bgr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(spark_image_to_array(2, 3, 3, 16, bgr.tobytes()), bgr[..., ::-1])
    bgra = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(spark_image_to_array(2, 3, 4, 24, bgra.tobytes()),
                                  bgra[..., [2, 1, 0, 3]])
    for args, match in [((2, 3, 3, 16, b"\0" * 17), "18"), ((2, 3, 3, 0, bgr.tobytes()), "mode"),
                        ((2, 3, 2, None, b"\0" * 12), "nChannels"), ((-1, -1, -1, -1, b""), "binaryFile"),
                        ((2, 3, 1, 5, b"\0" * 6), "OpenCV")]:
        with pytest.raises(cnp.ImageError, match=match):
            spark_image_to_array(*args)


def test_pipeline_save_load_round_trip_with_preprocessing_overrides(spark, model, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel

    df = spark.read.format("binaryFile").load([str(p) for p in THREE_PNGS]).repartition(1)
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", topK=2, batchSize=1,
                          backend="numpy", size=64, cropPct=1.0, resample="bilinear")
    fitted = Pipeline(stages=[clf]).fit(df)
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    Pipeline(stages=[clf]).write().save(str(tmp_path / "unfitted"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    stage = loaded.stages[0]
    assert isinstance(stage, ImageClassifier)
    assert stage.preprocessingOverrides() == {"size": 64, "crop_pct": 1.0, "resample": "bilinear"}
    assert (stage.getModelPath(), stage.getInputCol(), stage.getTopK()) == (MODEL, "content", 2)
    assert Pipeline.load(str(tmp_path / "unfitted")).getStages()[0].getOrDefault("size") == 64

    rows = by_name(loaded.transform(df).collect(), "path")
    small = cnp.ConvNeXt(model.config, model.params, backend="numpy", source=model.source,
                         preprocessor=dataclasses.replace(model.preprocessor, size=64,
                                                          crop_pct=1.0, resample="bilinear"))
    for p in THREE_PNGS:
        assert_same_predictions(rows[p.name].predictions, cnp.classify(p, model=small, top_k=2))


def test_each_python_worker_loads_the_model_once(spark, image_dir):
    df = spark.read.format("binaryFile").load(str(image_dir)).repartition(4)
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", backend="numpy")
    for _ in range(2):
        assert clf.transform(df).count() == len(ALL_IMAGES) + 1

    def loads(batches):  # in the same kind of worker (an Arrow one) as the transform's
        import pyarrow as pa
        import convnext_np.spark as s
        for _ in batches:
            yield pa.RecordBatch.from_pydict({"pid": [os.getpid()],
                                              "loads": [s._LOADS.get((MODEL, "numpy"), 0)]})

    counts = dict(spark.range(8).repartition(8).mapInArrow(loads, "pid long, loads long").collect())
    assert set(counts.values()) <= {0, 1} and 1 in counts.values(), counts


def test_model_shipped_with_add_file_is_found_by_name(spark, model, tmp_path):
    shipped = tmp_path / "shipped-convnext"
    shutil.copytree(MODEL, shipped)
    spark.sparkContext.addFile(str(shipped), recursive=True)  # what --files / --archives do
    df = spark.read.format("binaryFile").load(str(IMAGE_DIR / "camera.png"))
    row = ImageClassifier(modelPath="shipped-convnext", inputCol="content", topK=1,
                          backend="numpy", batchSize=1).transform(df).first()
    assert row.error is None
    expected = cnp.classify(IMAGE_DIR / "camera.png", model=model, top_k=1)[0].index
    assert row.predictions[0]["index"] == expected


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_numba_backend_gives_the_numpy_predictions(spark, model, image_dir):
    df = spark.read.format("binaryFile").load([str(p) for p in PNGS]).repartition(2)
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", topK=10, backend="numba")
    rows = by_name(clf.transform(df).collect(), "path")
    for p, preds in zip(PNGS, cnp.classify(PNGS, model=model, top_k=10)):
        got = {r["index"]: r.score for r in rows[p.name].predictions}
        assert got == pytest.approx({q.index: q.score for q in preds}, rel=0, abs=1e-5)



def test_each_task_runs_the_model_on_its_task_cpus(monkeypatch):
    """The mapInArrow function runs a copy of the worker's cached model with num_threads =
    spark.task.cpus, which convnext_np.threads applies per call, whatever backend serves."""
    import convnext_np.spark as s

    cached = cnp.from_pretrained(MODEL, backend="numpy")
    seen = []
    monkeypatch.setattr(s, "_get_model", lambda *args: cached)
    monkeypatch.setattr(s, "_task_cpus", lambda: 3)
    monkeypatch.setattr(s, "_classify_batch", lambda settings, model, batch: seen.append(model))
    settings = s._Settings(model_path=MODEL, backend="numpy", overrides=(), kind="binary", input_index=0,
                           path_index=None, top_k=1, batch_size=1, embedding=False, drop_invalid=False,
                           new_names=("predictions", "error"))
    list(s._classify_batches(settings, [types.SimpleNamespace(num_rows=1)]))
    assert [m.num_threads for m in seen] == [3] and cached.num_threads is None


def test_driver_side_checks(spark):
    df = spark.read.format("binaryFile").load(str(IMAGE_DIR / "camera.png"))
    with pytest.raises(ValueError, match="setInputCol\\('content'\\)"):
        ImageClassifier(modelPath=MODEL).transform(df)
    with pytest.raises(ValueError, match="column 'path' is string"):
        ImageClassifier(modelPath=MODEL, inputCol="path").transform(df)
    with pytest.raises(ValueError, match="'length' already exists"):
        ImageClassifier(modelPath=MODEL, inputCol="content", outputCol="length").transform(df)
    with pytest.raises(ValueError, match="crop_mode"):
        ImageClassifier(modelPath=MODEL, inputCol="content", cropMode="zoom").transform(df)
    with pytest.raises(ValueError, match="at least 32"):
        ImageClassifier(modelPath=MODEL, inputCol="content", size=16).transform(df)
    with pytest.raises(ValueError, match="unknown backend"):
        ImageClassifier(modelPath=MODEL, inputCol="content", backend="cuda").transform(df)


@pytest.mark.parametrize("checkpoint", [FIXTURES / "hf-safetensors", FIXTURES / "v2-timm-fcmae",
                                        FAMILY / "hf-dinov3"], ids=lambda p: p.name)
def test_embeddings_mode_gives_pooled_features_with_or_without_a_head(spark, checkpoint, image_dir):
    """outputMode='embeddings': outputCol is model(...).pooled, also for the headless FCMAE and
    DINOv3 checkpoints, which the other modes cannot classify with; a bad file gets its error."""
    df = spark.read.format("binaryFile").load(str(image_dir))
    clf = ImageClassifier(modelPath=str(checkpoint), inputCol="content", outputCol="features",
                          outputMode="embeddings", batchSize=2, backend="numpy")
    rows = by_name(clf.transform(df).select("path", "features", "error").collect(), "path")
    local = cnp.from_pretrained(checkpoint, backend="numpy")
    for p in THREE_PNGS:
        assert rows[p.name].error is None
        np.testing.assert_allclose(np.array(rows[p.name].features, np.float32),
                                   local(local.preprocessor(p)).pooled[0], rtol=0, atol=1e-5, strict=True)
    assert rows["broken.png"].features is None and "cannot read image" in rows["broken.png"].error


def test_embeddings_mode_refuses_a_backbone_and_a_second_embedding_column(spark):
    df = spark.read.format("binaryFile").load(str(IMAGE_DIR / "camera.png"))
    with pytest.raises(ValueError, match="leave embeddingCol unset"):
        ImageClassifier(modelPath=MODEL, inputCol="content", outputMode="embeddings",
                        embeddingCol="e").transform(df)
    backbone = ImageClassifier(modelPath=str(FAMILY / "hf-backbone"), inputCol="content",
                               outputMode="embeddings", backend="numpy")
    with pytest.raises(Exception, match="Backbone checkpoint"):
        backbone.transform(df).collect()
    with pytest.raises(Exception, match="no classification head"):  # the other modes need a head
        ImageClassifier(modelPath=str(FIXTURES / "v2-timm-fcmae"), inputCol="content",
                        backend="numpy").transform(df).collect()


def test_import_convnext_np_does_not_import_pyspark():
    code = "import sys, convnext_np; assert 'pyspark' not in sys.modules, 'pyspark imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- outputMode="annotations": Spark NLP's Annotation shape --------------------------------------
def test_annotations_are_spark_nlp_shaped_and_carry_every_score(spark, model, image_dir):
    df = spark.read.format("binaryFile").load(str(image_dir))
    clf = ImageClassifier(modelPath=MODEL, inputCol="content", outputCol="class",
                          outputMode="annotations", backend="numpy", batchSize=3)
    out = clf.transform(df)
    struct = out.schema["class"].dataType.elementType
    assert struct.names == ["annotatorType", "begin", "end", "result", "metadata", "embeddings"]
    assert [f.dataType.simpleString() for f in struct.fields] == [
        "string", "int", "int", "string", "map<string,string>", "array<float>"]
    rows = by_name(out.select("path", "class", "class.result", "error").collect(), "path")
    labels = set(model.config.id2label.values())
    for p in ALL_IMAGES:
        row = rows[p.name]
        expected = cnp.classify(p, model=model, top_k=model.config.num_labels)
        (a,) = row["class"]
        assert row.result == [expected[0].label] and row.error is None  # class.result, unchanged
        assert (a.annotatorType, a.begin, a.end) == ("category", 0, len(expected[0].label) - 1)
        assert set(a.metadata) == labels  # every class, keyed by its label
        assert {k: float(v) for k, v in a.metadata.items()} == \
            pytest.approx({q.label: q.score for q in expected}, rel=0, abs=1e-6)
        assert a.embeddings == []
    assert rows["broken.png"]["class"] is None and "broken.png" in rows["broken.png"].error
    with pytest.raises(ValueError, match="outputMode"):
        ImageClassifier(modelPath=MODEL, inputCol="content", outputMode="nlp").transform(df)


def test_a_label_two_classes_share_is_keyed_by_index_too():
    from convnext_np.spark import _java_float, _metadata_keys

    assert _metadata_keys({0: "crane", 1: "tench", 2: "crane"}) == ("crane (0)", "tench", "crane (2)")
    assert [_java_float(x) for x in (0.0, 1.0, 0.25, 1.5e-4, 0.001, 1e7)] == \
        ["0.0", "1.0", "0.25", "1.5E-4", "0.001", "1.0E7"]


def test_the_spark_doc_aggregation_equals_evaluate(spark, model, tmp_path):
    import re

    text = (Path(__file__).parent.parent / "docs" / "spark.md").read_text(encoding="utf-8")
    code = re.search(r"## Evaluate on a DataFrame.*?```python\n(.*?)```", text, re.S).group(1)
    # each photo is filed under its 1st, 2nd or 3rd label
    ranks = {"camera.png": 0, "chelsea.png": 1, "coffee.png": 2, "logo.png": 0}
    photos = [IMAGE_DIR / name for name in ranks]
    preds = cnp.classify(photos, model=model, top_k=3)
    for p, pred in zip(photos, preds):
        rank = ranks[p.name]
        (tmp_path / pred[rank].label).mkdir(exist_ok=True)
        shutil.copy(p, tmp_path / pred[rank].label / p.name)
    code = code.replace('"/data/val"', repr(str(tmp_path))).replace('"/models/my-classifier"', repr(MODEL))
    code = code.replace('outputMode="annotations")', 'outputMode="annotations", backend="numpy")')
    namespace = {"spark": spark}
    exec(compile(code, "docs/spark.md", "exec"), namespace)
    report = cnp.evaluate(tmp_path, model)
    assert namespace["top1"] == pytest.approx(report.top1)
    per_class = {r.truth: (r.n, r.top1) for r in namespace["per_class"].collect()}
    assert per_class == {k: (v["n"], pytest.approx(v["top1"])) for k, v in report.per_class.items()}
