"""evaluate and fit_head: counts checked by construction, a known head recovered exactly, a real
dataset (scikit-learn's digits) learnt, the saved head read back by us, the CLI and
transformers, and the feature cache resumed."""

import io
import json
import os
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convnext_np as cnp
from conftest import ALL_IMAGES, FIXTURES, IMAGE_DIR
from convnext_np.cli import main
from convnext_np.evaluate import label_indices, read_dataset
from convnext_np.head import (FeatureCache, fit_softmax_regression, model_fingerprint,
                              pooled_features, softmax_regression_loss, stratified_split)
from convnext_np.labels import imagenet_labels, imagenet_synsets
from convnext_np.preprocess import profile_processor, tf_resize_bicubic

MODEL = FIXTURES / "hf-safetensors"  # depths (2, 1, 3, 1), widths up to 44, 10 classes
PHOTOS = ALL_IMAGES
THREE = [IMAGE_DIR / n for n in ("camera.png", "chelsea.png", "coffee.png")]
CHELSEA = IMAGE_DIR / "chelsea.png"
CAMERA = IMAGE_DIR / "camera.png"


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(MODEL, backend="numpy")


def run(argv):
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


# --- evaluate -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(model, tmp_path_factory):
    """A folder whose answers are known by construction: photo 0 filed under its top-1 label,
    photo 1 under its 3rd-ranked label, photo 2 under a label outside its top 5, and a file
    that is not an image."""
    root = tmp_path_factory.mktemp("labelled")
    preds = cnp.classify([str(p) for p in THREE], model=model, top_k=10)
    folders = [preds[0][0].label, preds[1][2].label, preds[2][7].label]
    for photo, folder in zip(THREE, folders):
        (root / folder).mkdir(exist_ok=True)
        shutil.copy(photo, root / folder / photo.name)
    (root / folders[0] / "broken.jpg").write_bytes(b"not a JPEG")
    return root, folders, preds


def test_evaluate_counts_what_the_construction_says(model, labelled):
    root, folders, preds = labelled
    report = cnp.evaluate(root, model, top_k=(1, 3, 5))
    assert report.n == 3
    assert report.correct == {1: 1, 3: 2, 5: 2}
    assert report.top1 == pytest.approx(1 / 3) and report.top5 == pytest.approx(2 / 3)
    assert report.topk[3] == pytest.approx(2 / 3)
    assert [Path(p).name for p, _ in report.unreadable] == ["broken.jpg"]
    assert "broken.jpg" in report.unreadable[0][1]
    mistakes = {(folders[1], preds[1][0].label), (folders[2], preds[2][0].label)}
    assert {(t, p) for t, p, _ in report.confusions} == mistakes
    assert sum(c for *_, c in report.confusions) == 2
    assert sum(c["n"] for c in report.per_class.values()) == 3
    assert report.per_class[folders[0]]["top1"] == 1.0
    assert report.preprocessing["profile"] == "model" and report.preprocessing["crop_mode"] == "hf"
    json.dumps(report.to_dict())  # serialisable as the CLI prints it


def test_a_csv_dataset_gives_the_same_report(model, labelled, tmp_path):
    root, _, _ = labelled
    pairs = read_dataset(root)
    rows = ["path,label"] + [f"{os.path.relpath(p, tmp_path)},{label}" for p, label in pairs]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    from_csv = cnp.evaluate(tmp_path / "labels.csv", model, top_k=(1, 3, 5))
    from_folder = cnp.evaluate(root, model, top_k=(1, 3, 5))
    assert from_csv.correct == from_folder.correct and from_csv.confusions == from_folder.confusions
    assert len(from_csv.unreadable) == 1


def test_labels_map_by_name_wordnet_id_or_index():
    id2label = dict(enumerate(imagenet_labels(1000)))
    synsets = imagenet_synsets(1000)
    assert len(synsets) == 1000 and synsets[0] == "n01440764"  # tench, ImageNet's first class
    assert label_indices(["n01440764", "tench, Tinca tinca", "281", synsets[999]], id2label) == [0, 0, 281, 999]
    assert len(imagenet_synsets(21841)) == 21841
    with pytest.raises(ValueError, match="'no-such-class'"):
        label_indices(["tench, Tinca tinca", "no-such-class"], id2label)
    with pytest.raises(ValueError, match="'crane' names more than one class"):  # the bird and the machine
        label_indices(["crane"], id2label)


def test_bad_datasets_are_named(tmp_path, model):
    with pytest.raises(ValueError, match="no such dataset"):
        read_dataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="no class folders"):
        read_dataset(tmp_path)
    (tmp_path / "bad.csv").write_text("a.png,cat,extra\n")
    with pytest.raises(ValueError, match="line 1: expected 'path,label'"):
        read_dataset(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="top_k"):
        cnp.evaluate(tmp_path / "bad.csv", model, top_k=0)


def test_profiles_resize_as_their_reference_says(model):
    base = model.preprocessor
    assert profile_processor("model", base) is base
    assert profile_processor("timm", base) == profile_processor("center", base)
    mean, std = np.float32(base.image_mean), np.float32(base.image_std)
    with Image.open(CHELSEA) as image:
        rgb = image.convert("RGB")
    # timm's squash at crop_pct 0.875: both sides to 256 (PIL bicubic), then the centre 224.
    squashed = np.asarray(rgb.resize((256, 256), Image.Resampling.BICUBIC))[16:240, 16:240]
    np.testing.assert_allclose(profile_processor("squash", base).preprocess(CHELSEA),
                               ((squashed / np.float32(255) - mean) / std).transpose(2, 0, 1), atol=1e-6)
    # The Keras port's: TensorFlow's bicubic to 256, unrounded, then tf.image.central_crop(0.875).
    tfhub = profile_processor("tfhub", base)
    resized = tf_resize_bicubic(np.asarray(rgb), 256, 256)[16:240, 16:240]
    np.testing.assert_allclose(tfhub.preprocess(CHELSEA),
                               ((resized / np.float32(255) - mean) / std).transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="no transformers equivalent"):
        tfhub.to_hf_dict()
    with pytest.raises(ValueError, match="unknown preprocessing profile"):
        profile_processor("keras", base)


def test_tensorflow_bicubic_by_hand():
    """Keys' cubic with a = -0.5 interpolates exactly: the same grid gives the image back, and
    a linear ramp stays linear between the borders (the weights sum to 1 and have their centre
    of mass at the sample point)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(tf_resize_bicubic(x, 5, 7), x)
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (3, 40, 3))
    up = tf_resize_bicubic(ramp, 3, 80)[0, 4:-4, 0]
    np.testing.assert_allclose(up, (np.arange(4, 76) + 0.5) / 2 - 0.5, atol=1e-5)  # half-pixel centres
    down = tf_resize_bicubic(ramp, 3, 16)[0, 2:-2, 0]  # 2.5x smaller, still four taps: no antialias
    np.testing.assert_allclose(down, (np.arange(2, 14) + 0.5) * 2.5 - 0.5, atol=1e-4)
    np.testing.assert_allclose(tf_resize_bicubic(np.full((9, 11, 3), 7, np.float32), 4, 17), 7, atol=1e-5)
    # Overshoot at an edge is kept, neither clipped nor rounded.
    step = np.zeros((4, 8, 1), np.float32)
    step[:, 4:] = 255
    assert tf_resize_bicubic(step, 4, 20).max() > 255


def test_tensorflow_bicubic_equals_tensorflow():
    """Against tf.image.resize itself, when TensorFlow is installed (it is no dependency)."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    for shape, size in [((375, 500, 3), (256, 256)), ((31, 17, 3), (64, 40)), ((64, 64, 3), (7, 9))]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        theirs = tf.image.resize(x, size, method="bicubic").numpy()
        np.testing.assert_allclose(tf_resize_bicubic(x, *size), theirs, rtol=0, atol=1e-4)  # measured: 0


def test_evaluate_command(labelled):
    root, _, _ = labelled
    code, out = run(["evaluate", str(root), "--model", str(MODEL), "--backend", "numpy",
                     "--top-k", "1", "3", "--profile", "tfhub"])
    assert code == 1  # an unreadable image: reported, and the exit status says so
    assert "top-1           33.33%  (1/3)" in out and "top-3           66.67%  (2/3)" in out
    assert "preprocessing: tfhub: tf at 224" in out and "broken.jpg" in out
    code, out = run(["evaluate", str(root), "--model", str(MODEL), "--backend", "numpy", "--format", "json"])
    report = json.loads(out)
    assert code == 1 and report["n"] == 3 and report["topk"]["1"] == pytest.approx(1 / 3)
    assert report["unreadable"][0]["image"].endswith("broken.jpg")


def test_evaluate_command_refuses_labels_the_model_lacks(tmp_path, capsys):
    (tmp_path / "not-a-class").mkdir()
    shutil.copy(CAMERA, tmp_path / "not-a-class")
    code, out = run(["evaluate", str(tmp_path), "--model", str(MODEL), "--backend", "numpy"])
    assert code == 2 and out == ""
    assert "'not-a-class'" in capsys.readouterr().err


# --- fit_head ---------------------------------------------------------------------------------
def test_the_gradient_is_the_derivative_of_the_loss():
    from scipy.optimize import check_grad
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 4, 50)
    theta = rng.normal(size=4 * 7)
    error = check_grad(lambda t: softmax_regression_loss(t, x, y, 4, 0.1)[0],
                       lambda t: softmax_regression_loss(t, x, y, 4, 0.1)[1], theta)
    assert error < 1e-5 * np.linalg.norm(softmax_regression_loss(theta, x, y, 4, 0.1)[1])
    # Stable for logits far beyond exp's range.
    loss, grad = softmax_regression_loss(theta * 1e4, x, y, 4, 0.0)
    assert np.isfinite(loss) and np.isfinite(grad).all()


def test_a_known_linear_head_is_recovered():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    w_true, b_true = rng.normal(size=(5, 16)), rng.normal(size=5)
    y = np.argmax(x @ w_true.T + b_true, axis=1)
    # Separable labels and no penalty: the loss goes to zero, every point on its side.
    w, b, _ = fit_softmax_regression(x, y, 5, l2=0.0)
    assert np.array_equal(np.argmax(x @ w.T + b, axis=1), y)  # agreement 100%
    fresh = rng.normal(size=(2000, 16)).astype(np.float32)
    agreement = np.mean(np.argmax(fresh @ w.T + b, axis=1) == np.argmax(fresh @ w_true.T + b_true, axis=1))
    assert agreement > 0.97


def test_the_objective_is_scikit_learns():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(3, 8)).T + rng.normal(size=(300, 3)), axis=1)  # noisy labels
    w, b, _ = fit_softmax_regression(x, y, 3, tol=1e-10)
    theirs = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(x.astype(np.float64), y)
    z = x @ w.T + b
    ours = np.exp(z - z.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    np.testing.assert_allclose(ours, theirs.predict_proba(x), atol=1e-4)


def test_the_validation_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(3), [10, 5, 2])
    val = stratified_split(y, 0.2, seed=0)
    assert [int(val[y == c].sum()) for c in range(3)] == [2, 1, 1]
    assert np.array_equal(val, stratified_split(y, 0.2, seed=0))
    assert not np.array_equal(val, stratified_split(y, 0.2, seed=1))
    assert not stratified_split(y, 0.0).any()
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(y, 1.0)


def noise_images(n, seed=0, size=48):
    """Noise around a random colour, at a random contrast: images whose features differ."""
    rng = np.random.default_rng(seed)
    return [np.clip(rng.uniform(0, 255, 3) + rng.uniform(5, 80) * rng.standard_normal((size, size, 3)),
                    0, 255).astype(np.uint8) for _ in range(n)]


def test_fit_head_recovers_a_head_chosen_on_the_models_features(model):
    images = noise_images(80)
    pooled = model(model.preprocessor(images)).pooled
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, pooled.shape[1]))
    b = -pooled.mean(axis=0) @ w.T  # through the features' centre, so every class occurs
    names = np.array(["ant", "bee", "cat"])
    labels = list(names[np.argmax(pooled @ w.T + b, axis=1)])
    assert sorted(set(labels)) == list(names)
    fitted = cnp.fit_head(model, images, labels, val_fraction=0, l2=0.0)
    assert fitted.config.id2label == {0: "ant", 1: "bee", 2: "cat"}
    assert [p[0].label for p in cnp.classify(images, model=fitted, top_k=1)] == labels
    assert fitted.fit_report.train_accuracy == 1.0 and fitted.fit_report.val_accuracy is None
    assert model.config.num_labels == 10  # the original is untouched


def digits(n, size=64):
    """scikit-learn's bundled 8x8 handwritten digits (UCI), upscaled to size x size."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    images = [np.asarray(Image.fromarray((x * 255 / 16).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)) for x in d.images[:n]]
    return images, [str(t) for t in d.target[:n]]


def test_fit_head_learns_handwritten_digits_with_random_weights(model):
    images, labels = digits(500)
    small = cnp.from_pretrained(MODEL, backend="numpy")
    small.preprocessor = cnp.ImageProcessor(size=64, crop_pct=1.0)
    fitted = cnp.fit_head(small, images, labels, val_fraction=0.3, seed=0)
    report = fitted.fit_report
    assert report.labels == [str(d) for d in range(10)]
    assert report.n_val == 150 and report.n_train == 350
    # Chance is 10%. The micro fixture's random weights reach about 80% held out (docs/evaluation.md).
    assert report.val_accuracy > 0.6, report


@pytest.fixture
def photo_dataset(tmp_path):
    root = tmp_path / "photos"
    for i, photo in enumerate(PHOTOS):
        (root / ("even" if i % 2 == 0 else "odd")).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / ("even" if i % 2 == 0 else "odd") / photo.name)
    return root


def test_the_saved_head_loads_everywhere_and_agrees(model, photo_dataset, tmp_path):
    fitted = cnp.fit_head(model, photo_dataset, val_fraction=0)
    assert fitted.config.id2label == {0: "even", 1: "odd"}
    out = tmp_path / "classifier"
    fitted.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "even", "1": "odd"}
    assert config["architectures"] == ["ConvNextForImageClassification"]
    loaded = cnp.from_pretrained(out, backend="numpy")
    x = model.preprocessor([str(p) for p in PHOTOS])
    np.testing.assert_allclose(loaded(x).logits, fitted(x).logits, atol=1e-6)
    np.testing.assert_array_equal(loaded(x).pooled, model(x).pooled)  # the backbone is untouched
    ours = cnp.classify([str(p) for p in PHOTOS], model=loaded, top_k=2)
    code, text = run(["classify", *map(str, PHOTOS), "--model", str(out), "--backend", "numpy",
                      "--format", "json", "--top-k", "2"])
    assert code == 0
    assert [[p["label"] for p in item["predictions"]] for item in json.loads(text)] == \
        [[p.label for p in preds] for preds in ours]


@pytest.mark.reference
@pytest.mark.slow
def test_transformers_reads_the_saved_head_and_agrees(model, photo_dataset, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from convnext_np.testing import LOGITS_ATOL
    fitted = cnp.fit_head(model, photo_dataset, val_fraction=0)
    fitted.save_pretrained(tmp_path / "classifier")
    theirs = transformers.ConvNextForImageClassification.from_pretrained(tmp_path / "classifier").eval()
    assert theirs.config.id2label == {0: "even", 1: "odd"}
    x = model.preprocessor([str(p) for p in PHOTOS])
    with torch.no_grad():
        logits = theirs(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(fitted(x).logits, logits, atol=LOGITS_ATOL)


def test_the_feature_cache_resumes_and_notices_changed_files(model, photo_dataset, tmp_path):
    paths = sorted(str(p) for p in photo_dataset.rglob("*.*"))
    fingerprint = model_fingerprint(model, model.preprocessor)
    cache = FeatureCache(tmp_path / "cache", fingerprint, part_size=100)  # no part is full
    seen = []

    def interrupt():
        seen.append(1)
        if len(seen) == 4:  # progress counts images done: two batches of 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pooled_features(model, paths, batch_size=2, cache=cache, progress=interrupt)
    resumed = FeatureCache(tmp_path / "cache", fingerprint, part_size=2)
    assert len(resumed.rows) == 4  # the two batches computed before it, written on the way out
    features, kept, unreadable, computed = pooled_features(model, paths, batch_size=2, cache=resumed)
    assert computed == len(paths) - 4 and kept == list(range(len(paths))) and not unreadable
    fresh, *_ = pooled_features(model, paths, batch_size=2)
    np.testing.assert_array_equal(features, fresh)
    # A file that changes is recomputed; another model or preprocessing has its own folder.
    Path(paths[0]).write_bytes(Path(PHOTOS[-1]).read_bytes())
    again = FeatureCache(tmp_path / "cache", fingerprint)
    assert pooled_features(model, paths, cache=again)[3] == 1
    assert model_fingerprint(model, profile_processor("squash", model.preprocessor)) != fingerprint


def test_fit_head_command(photo_dataset, tmp_path, capsys):
    (photo_dataset / "odd" / "broken.png").write_bytes(b"\x89PNG broken")
    argv = ["fit-head", str(photo_dataset), "--model", str(MODEL), "--backend", "numpy",
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--val-fraction", "0.34"]
    code, out = run(argv)
    assert code == 1 and "broken.png" in capsys.readouterr().err  # reported, the rest fitted
    assert "features: 6 images (6 computed, 0 from the cache)" in out
    assert "2 classes on 44 features, 4 training images" in out and "validation" in out
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors",
                                                    "preprocessor_config.json"]
    code, out = run(argv)
    assert "features: 6 images (0 computed, 6 from the cache)" in out
    assert cnp.from_pretrained(tmp_path / "out").config.id2label == {0: "even", 1: "odd"}
    code, _ = run(argv[:-2] + ["--val-fraction", "1.5"])
    assert code == 2 and "val_fraction" in capsys.readouterr().err


def test_fit_head_refuses_what_it_cannot_fit(model):
    with pytest.raises(ValueError, match="at least 2 classes"):
        cnp.fit_head(model, noise_images(3), ["a", "a", "a"])
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        cnp.fit_head(model, noise_images(3), ["a", "b"])


def test_commands_have_help_with_examples():
    for command in ("evaluate", "fit-head"):
        code = None
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        code = exit_.value.code
        assert code == 0 and f"usage: convnext-np {command}" in out.getvalue()
        assert "examples:" in out.getvalue() and "tfhub" in out.getvalue()
