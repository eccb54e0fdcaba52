"""``verify`` against published logits. The published checkpoints and the COCO image are not here,
so the logic is tested on the micro fixture, with an expectation computed by transformers (its
own processor and model), rounded to 4 decimals as the published values are."""

import dataclasses
from pathlib import Path

import pytest

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np import cli, published
from convnext_np.checkpoints import find_checkpoint
from convnext_np.published import PUBLISHED, Expected, verify

IMAGE = str(Path(__file__).parent / "data" / "images" / "chelsea.png")
MODEL = str(FIXTURES / "hf-safetensors")


@pytest.fixture(scope="module")
def fixture_expectation():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.image_utils import load_image  # what pipeline("image-classification") does

    theirs = transformers.ConvNextForImageClassification.from_pretrained(MODEL).eval()
    processor = transformers.ConvNextImageProcessorPil(  # the settings of facebook/convnext-tiny-224
        size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = theirs(processor(load_image(IMAGE), return_tensors="pt")["pixel_values"]).logits
    return Expected("fixture/micro", tuple(round(float(v), 4) for v in logits[0, :3]), atol=1e-4, rtol=1e-5,
                    image=IMAGE, source="transformers on the micro fixture", kind="test",
                    preprocessing="ConvNextImageProcessorPil, 224, crop_pct 0.875, bicubic")


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(MODEL, backend="numpy")


def perturbed(e, i=1, by=1e-3):
    logits = list(e.logits)
    logits[i] += by
    return dataclasses.replace(e, logits=tuple(logits))


def test_verify_passes_against_transformers_and_fails_when_perturbed(model, fixture_expectation):
    good = verify(model, IMAGE, fixture_expectation)
    assert good.passed and good.verdict == "PASS"
    assert good.max_abs_diff <= 5e-5 + 1e-5  # the 4-decimal rounding, plus float32 noise
    bad = verify(model, IMAGE, perturbed(fixture_expectation))
    assert not bad.passed and bad.verdict == "FAIL"
    assert bad.max_abs_diff == pytest.approx(1e-3, abs=6e-5)


def run(capsys, table, *argv):
    args = cli.build_parser().parse_args(["verify", *argv])
    assert args.func is cli.cmd_verify
    code = cli.cmd_verify(args, table=table)
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_command_verdicts(capsys, fixture_expectation):
    e = fixture_expectation
    code, out, _ = run(capsys, (e,), "--model", MODEL, "--checkpoint", "fixture/micro", "--image", IMAGE)
    assert code == 0 and "verdict: PASS" in out and "max |diff|" in out
    assert "is this the reference image?" in out  # chelsea.png is not COCO 000000039769

    code, out, _ = run(capsys, (perturbed(e),), "--model", MODEL, "--checkpoint", "fixture/micro", "--image", IMAGE)
    assert code == 1 and "verdict: FAIL" in out and "[FAIL] (judged)" in out


def test_verdict_rests_on_the_test_values_and_any_of_them_may_pass(capsys, fixture_expectation):
    """As for convnext-tiny-224: two test-suite values (PIL and torchvision pipelines) that no
    one output can both meet, and a converter value that is printed but does not judge."""
    e = fixture_expectation
    other_pipeline = dataclasses.replace(perturbed(e, 2, -1e-3), source="newer test")
    converter = dataclasses.replace(perturbed(e, 0, 0.05), kind="converter", source="converter")
    table = (other_pipeline, e, converter)
    code, out, _ = run(capsys, table, "--model", MODEL, "--checkpoint", "fixture/micro", "--image", IMAGE)
    assert code == 0 and "verdict: PASS" in out
    assert out.count("(judged)") == 2 and "[FAIL] (info) converter" in out

    code, out, _ = run(capsys, (other_pipeline, converter), "--model", MODEL, "--checkpoint",
                       "fixture/micro", "--image", IMAGE)
    assert code == 1 and "verdict: FAIL" in out
    code, out, _ = run(capsys, (dataclasses.replace(e, kind="converter"),), "--model", MODEL,
                       "--checkpoint", "fixture/micro", "--image", IMAGE)
    assert code == 0  # with only converter values, they judge


def test_usage_errors(capsys, fixture_expectation, tmp_path):
    table = (fixture_expectation,)
    code, _, err = run(capsys, table, "--model", MODEL, "--checkpoint", "fixture/micro")
    assert code == 2 and "000000039769.png" in err  # says where to get the image
    code, _, err = run(capsys, table, "--model", MODEL, "--image", IMAGE)
    assert code == 2 and "--checkpoint" in err  # a local path names no checkpoint
    code, _, err = run(capsys, table, "--model", str(tmp_path / "gone"), "--checkpoint", "fixture/micro",
                       "--image", IMAGE)
    assert code == 2 and "cannot load model" in err
    code, _, err = run(capsys, PUBLISHED, "--model", MODEL, "--checkpoint", "facebook/convnext-tiny-224",
                       "--image", IMAGE)
    assert code == 2 and "1000 classes" in err  # the micro model cannot be convnext-tiny-224


def test_a_hub_cache_path_names_its_checkpoint():
    path = "/home/u/.cache/huggingface/hub/models--facebook--convnext-tiny-224/snapshots/abc"
    assert published.checkpoint_of_path(path) == "facebook/convnext-tiny-224"


def test_published_table_matches_the_spec_and_the_checkpoint_table():
    tiny = published.expectations("convnext-tiny-224")  # aliases resolve to the hub id
    assert [(e.kind, e.logits, e.atol, e.rtol) for e in tiny] == [
        ("test", (-0.0260, -0.4739, 0.1911), 1e-4, 1e-5),
        ("test", (-0.0267, -0.4735, 0.1901), 2e-4, 2e-4),
        ("converter", (-0.1210, -0.6605, 0.1918), 1e-3, 1e-5)]
    assert published.judged(tiny) == tiny[:2]
    converter = [e for e in PUBLISHED if e.kind == "converter"]
    assert len(converter) == 15 + 18 and len({e.checkpoint for e in converter}) == 15 + 18  # V1 + V2
    for e in converter:
        row = find_checkpoint(e.checkpoint)
        assert row is not None and row.hf_id == e.checkpoint
        assert f"checkpoint {row.fb})" in e.source  # the facebookresearch file it was made from
        assert len(e.logits) == (5 if row.model_type == "convnextv2" else 3) and e.atol == 1e-3
    v2 = published.expectations("convnextv2-tiny-1k-224")
    assert [(e.kind, e.logits[:3], e.atol, e.rtol) for e in v2] == [
        ("test", (0.9996, 0.1966, -0.4386), 1e-4, 1e-4),
        ("test", (0.9989, 0.1953, -0.4382), 1e-4, 1e-4),
        ("converter", (0.9996, 0.1966, -0.4386), 1e-3, 1e-5)]
    assert published.judged(v2) == v2[:2]
