"""Golden bundles: written, read back by two independent readers, re-checked, tamper-evident."""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from numpy.testing import assert_allclose
from safetensors.numpy import load_file, save_file

import convnext_np as cnp
from conftest import FIXTURES, IMAGE_DIR
from convnext_np import cli, golden, ops
from convnext_np.safetensors_file import SafetensorsFile
from convnext_np.testing import LOGITS_ATOL

IMAGES = IMAGE_DIR
PHOTOS = [str(IMAGES / "chelsea.png"), str(IMAGES / "rocket.jpg")]
MODEL = str(FIXTURES / "hf-safetensors")
NAMES = ["pixel_values", *(f"hidden_states.{i}" for i in range(5)), "pooled", "logits"]


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(MODEL, backend="numpy")


@pytest.fixture(scope="module")
def bundles(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    golden.write_bundle(PHOTOS, model, root / "f32", name=MODEL)
    golden.write_bundle(PHOTOS, model, root / "f64", float64=True, name=MODEL)
    return root / "f32", root / "f64"


def test_bundle_holds_every_stage_and_the_manifest_describes_it(bundles, model):
    path = bundles[0]
    manifest = json.loads((path / "manifest.json").read_text())
    ours = SafetensorsFile(path / "tensors.safetensors")  # our validating reader
    theirs = load_file(str(path / "tensors.safetensors"))  # the safetensors library's
    assert list(manifest["tensors"]) == NAMES and set(ours.keys()) == set(theirs) == set(NAMES)
    expected = model(model.preprocessor(PHOTOS), output_hidden_states=True)
    assert_allclose(theirs["logits"], expected.logits, rtol=0, atol=0, strict=True)
    for i, h in enumerate(expected.hidden_states):
        assert_allclose(theirs[f"hidden_states.{i}"], h, rtol=0, atol=0, strict=True)
    for name, entry in manifest["tensors"].items():
        x = theirs[name]
        assert_allclose(ours.tensor(name), x, rtol=0, atol=0, strict=True)
        assert entry["shape"] == list(x.shape) and entry["dtype"] == "float32" == str(x.dtype)
        assert entry["sha256"] == hashlib.sha256(x.astype("<f4").tobytes()).hexdigest()
        x64 = x.astype(np.float64)
        assert [entry[k] for k in ("min", "max", "mean", "std")] == pytest.approx(
            [x64.min(), x64.max(), x64.mean(), x64.std()], rel=1e-12)
        assert entry["tolerance"]["atol"] > 0 and entry["tolerance"]["rtol"] == 0
    assert manifest["tensors"]["pixel_values"]["shape"] == [2, 3, 224, 224]
    assert manifest["tensors"]["hidden_states.4"]["shape"] == [2, 44, 7, 7]
    assert manifest["tensors"]["logits"]["tolerance"]["atol"] == LOGITS_ATOL


def test_manifest_records_where_the_numbers_came_from(bundles, model):
    m = json.loads((bundles[0] / "manifest.json").read_text())
    files = {f["name"]: f["sha256"] for f in m["model"]["files"]}
    weights = FIXTURES / "hf-safetensors" / "model.safetensors"
    assert files["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert m["model"]["name"] == MODEL and m["model"]["depths"] == [2, 1, 3, 1]
    assert m["preprocessing"] == {**m["preprocessing"], "size": 224, "crop_pct": 0.875,
                                  "resample": "bicubic", "crop_mode": "hf"}
    assert cnp.ImageProcessor(**m["preprocessing"]) == model.preprocessor  # the full config
    assert [i["name"] for i in m["images"]] == ["chelsea.png", "rocket.jpg"]
    assert m["versions"]["numpy"] == np.__version__ and m["compute"]["dtype"] == "float32"


def test_check_bundle_passes_on_a_fresh_bundle(bundles):
    report = golden.check_bundle(bundles[0])  # loads the model the manifest names
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == NAMES
    assert all(c.max_abs_diff is not None and c.max_abs_diff <= c.atol for c in report.checks[1:])
    assert "verdict: PASS" in str(report)


def test_a_tampered_tensor_fails_its_hash(bundles, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundles[0], bad)
    tensors = load_file(str(bad / "tensors.safetensors"))
    tensors["hidden_states.2"][0, 3, 5, 5] += 1e-3
    save_file(tensors, str(bad / "tensors.safetensors"))
    report = golden.check_bundle(bad, MODEL)
    assert not report.ok and "verdict: FAIL" in str(report)
    failed = {c.name: c for c in report.checks if not c.ok}
    assert list(failed) == ["hidden_states.2"] and not failed["hidden_states.2"].hash_ok


def test_wrong_numbers_with_a_consistent_manifest_fail_the_rerun(bundles, tmp_path):
    """A bundle whose hashes are right but whose numbers are not: only the re-run can tell."""
    bad = tmp_path / "bad"
    shutil.copytree(bundles[0], bad)
    tensors = load_file(str(bad / "tensors.safetensors"))
    tensors["logits"][1, 4] += 10 * LOGITS_ATOL
    save_file(tensors, str(bad / "tensors.safetensors"))
    manifest = json.loads((bad / "manifest.json").read_text())
    entry = manifest["tensors"]["logits"]
    entry.update(golden.tensor_stats(tensors["logits"]), sha256=golden.tensor_sha256(tensors["logits"]))
    (bad / "manifest.json").write_text(json.dumps(manifest))
    report = golden.check_bundle(bad, MODEL)
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["logits"] and failed[0].hash_ok and not failed[0].within
    assert failed[0].max_abs_diff == pytest.approx(10 * LOGITS_ATOL, rel=1e-3)


def test_other_weights_are_reported(bundles, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(FIXTURES / "hf-safetensors", other)
    tensors = load_file(str(other / "model.safetensors"))
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1.0
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    report = golden.check_bundle(bundles[0], str(other))
    assert not report.ok
    assert any("model.safetensors" in p and "not the one" in p for p in report.problems)
    assert [c.name for c in report.checks if not c.ok] == ["logits"]


def test_float64_bundle_is_float64_and_agrees_with_float32(bundles):
    f32, f64 = (load_file(str(b / "tensors.safetensors")) for b in bundles)
    manifest = json.loads((bundles[1] / "manifest.json").read_text())
    assert manifest["compute"]["dtype"] == "float64"
    assert f64["pixel_values"].dtype == np.float32  # the input is what the preprocessor makes
    assert_allclose(f64["pixel_values"], f32["pixel_values"], rtol=0, atol=0, strict=True)
    for name in NAMES[1:]:
        assert f64[name].dtype == np.float64 and manifest["tensors"][name]["dtype"] == "float64"
        tol = manifest["tensors"][name]["tolerance"]
        diff = np.abs(f32[name].astype(np.float64) - f64[name]).max()
        assert 0 < diff <= tol["atol"] / 10, name  # float32 rounding, well inside the tolerance
    assert golden.check_bundle(bundles[1], MODEL).ok  # re-run in float64
    report = golden.check_bundle(bundles[1], MODEL, float64=False)  # a float32 run against it
    assert report.ok and report.compute_dtype == "float32", str(report)


def test_float64_forward_leaves_the_model_float32(model):
    x = model.preprocessor(PHOTOS[:1])
    before = model(x).logits
    out = golden.forward_float64(model, x)
    assert {h.dtype for h in out.hidden_states} | {out.pooled.dtype, out.logits.dtype} == {np.dtype(np.float64)}
    assert all(a.dtype == np.float32 for stage in model.params["stages"] for b in stage["blocks"]
               for a in b.values())
    assert_allclose(model(x).logits, before, rtol=0, atol=0, strict=True)
    assert_allclose(out.logits, before.astype(np.float64), rtol=0, atol=1e-5)


def test_float64_ops_are_the_reference_ops_with_an_exact_erf():
    x = np.linspace(-7, 7, 141)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert_allclose(golden.FLOAT64_OPS.gelu(x), want, rtol=1e-14, atol=1e-300, strict=True)
    for name in ("patchify", "depthwise_conv", "layer_norm", "linear", "global_avg_pool"):
        assert getattr(golden.FLOAT64_OPS, name) is getattr(ops, name)


def test_golden_command(tmp_path, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["golden", PHOTOS[0], "--model", MODEL, "--out", str(tmp_path / "g")])
    assert args.func is cli.cmd_golden and not args.float64
    assert cli.cmd_golden(args) == 0
    out = capsys.readouterr().out
    assert "tensors.safetensors" in out and "hidden_states.4" in out
    assert golden.check_bundle(tmp_path / "g").ok

    args = parser.parse_args(["golden", PHOTOS[0], "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert cli.cmd_golden(args) == 2 and not (tmp_path / "x").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    args = parser.parse_args(["golden", str(broken), "--model", MODEL, "--out", str(tmp_path / "y")])
    assert cli.cmd_golden(args) == 1 and not (tmp_path / "y" / "manifest.json").exists()
    assert "broken.png" in capsys.readouterr().err


def test_float64_bundle_matches_transformers_in_float64(bundles):
    """The float64 path is independent of float32 rounding: transformers, run in float64 on the
    same weights and pixel_values, agrees with the bundle to a few float64 ulp."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    theirs = transformers.ConvNextForImageClassification.from_pretrained(MODEL).eval().double()
    stored = load_file(str(bundles[1] / "tensors.safetensors"))
    with torch.no_grad():
        ref = theirs(torch.from_numpy(stored["pixel_values"]).double(), output_hidden_states=True)
    assert_allclose(stored["logits"], ref.logits.numpy(), rtol=0, atol=1e-12, strict=True)
    for i, h in enumerate(ref.hidden_states):
        h = h.numpy()
        assert_allclose(stored[f"hidden_states.{i}"], h, rtol=0, atol=1e-12 * np.abs(h).max(), strict=True)


def test_v2_bundles_float32_and_float64(tmp_path):
    """A ConvNeXt V2 (GRN) bundle: its manifest says so, float64 agrees with float32, both re-check."""
    source = str(FIXTURES / "v2-timm")
    model = cnp.from_pretrained(source, backend="numpy")
    golden.write_bundle(PHOTOS, model, tmp_path / "f32", name=source)
    golden.write_bundle(PHOTOS, model, tmp_path / "f64", float64=True, name=source)
    manifest = json.loads((tmp_path / "f64" / "manifest.json").read_text())
    assert manifest["model"]["model_type"] == "convnextv2"
    f32, f64 = (load_file(str(tmp_path / b / "tensors.safetensors")) for b in ("f32", "f64"))
    for name in NAMES[1:]:
        tol = manifest["tensors"][name]["tolerance"]
        assert 0 < np.abs(f32[name].astype(np.float64) - f64[name]).max() <= tol["atol"] / 10, name
    assert golden.check_bundle(tmp_path / "f32", source).ok and golden.check_bundle(tmp_path / "f64", source).ok
