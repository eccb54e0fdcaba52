"""The convnext-np command line, run as users run it."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convnext_np as cnp
from conftest import FIXTURES, IMAGE_DIR
from convnext_np.cli import main
from convnext_np.safetensors_file import SafetensorsFile

IMAGES = IMAGE_DIR
MODEL = str(FIXTURES / "hf-safetensors")


@pytest.fixture
def images(tmp_path):
    shutil.copy(IMAGES / "chelsea.png", tmp_path / "cat, tabby.png")  # a comma in the name
    shutil.copy(IMAGES / "rocket.jpg", tmp_path / "rocket.jpg")
    (tmp_path / "sub").mkdir()
    shutil.copy(IMAGES / "camera.png", tmp_path / "sub" / "camera.png")
    (tmp_path / "notes.txt").write_text("not an image, and not picked up from a directory")
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_json_matches_the_api(capsys, images):
    code, out, err = run(capsys, "classify", str(images), "--model", MODEL, "--format", "json", "--top-k", "2")
    assert code == 0, err
    items = json.loads(out)
    assert [Path(i["image"]).name for i in items] == ["cat, tabby.png", "rocket.jpg", "camera.png"]
    model = cnp.from_pretrained(MODEL)
    for item in items:
        expected = cnp.classify(item["image"], model=model, top_k=2)
        assert [p["index"] for p in item["predictions"]] == [p.index for p in expected]
        assert [p["score"] for p in item["predictions"]] == pytest.approx([p.score for p in expected])
        assert set(item["predictions"][0]) == {"label", "index", "score"}


def test_bad_files_are_reported_and_the_rest_go_on(capsys, images):
    bad = images / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out, err = run(capsys, "classify", str(bad), str(images / "rocket.jpg"), str(images / "gone.png"),
                         "--model", MODEL, "--format", "jsonl")
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [("error" in x, "predictions" in x) for x in lines] == [(True, False), (False, True), (True, False)]
    assert "broken.jpg" in lines[0]["error"] and "gone.png" in lines[2]["error"]
    assert "broken.jpg" in err and "Traceback" not in err


def test_csv_is_quoted(capsys, images):
    code, out, _ = run(capsys, "classify", str(images / "cat, tabby.png"), "--model", MODEL,
                       "--format", "csv", "--top-k", "3")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["image", "rank", "index", "label", "score", "error"]
    assert len(rows) == 4 and all(r[0].endswith("cat, tabby.png") for r in rows[1:])
    assert [r[1] for r in rows[1:]] == ["1", "2", "3"]


def test_table_output(capsys, images):
    code, out, _ = run(capsys, "classify", str(images / "rocket.jpg"), "--model", MODEL, "-k", "1")
    assert code == 0 and "rocket.jpg" in out and "1." in out and "LABEL_" in out


def test_model_that_cannot_load_exits_2(capsys, images, tmp_path):
    code, _, err = run(capsys, "classify", str(images / "rocket.jpg"), "--model", str(tmp_path / "nope"))
    assert code == 2 and "cannot load model" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["classify", "x.jpg", "--top-k", "0"])
    assert info.value.code == 2


def test_features_npy_and_safetensors(capsys, images, tmp_path):
    code, _, _ = run(capsys, "features", str(images), "--model", MODEL, "--out", str(tmp_path / "f.npy"))
    assert code == 0
    feats = np.load(tmp_path / "f.npy")
    names = (tmp_path / "f.npy.images.txt").read_text().splitlines()
    assert feats.shape == (3, 44) and feats.dtype == np.float32 and len(names) == 3
    model = cnp.from_pretrained(MODEL)
    np.testing.assert_allclose(feats[1], model(model.preprocessor(names[1])).pooled[0], atol=1e-5)
    code, _, _ = run(capsys, "features", str(images / "rocket.jpg"), "--model", MODEL,
                     "--out", str(tmp_path / "f.safetensors"))
    f = SafetensorsFile(tmp_path / "f.safetensors")
    assert code == 0 and f.shape("pooled") == (1, 44) and "rocket.jpg" in f.metadata["images"]


def test_convert_writes_hf_layout(capsys, tmp_path):
    code, out, _ = run(capsys, "convert", str(FIXTURES / "fb-pth" / "checkpoint.pth"), str(tmp_path / "hf"))
    assert code == 0 and "model.safetensors" in out
    a = cnp.from_pretrained(FIXTURES / "fb-pth" / "checkpoint.pth")
    b = cnp.from_pretrained(tmp_path / "hf")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(a(x).logits, b(x).logits)


def test_info(capsys):
    code, out, _ = run(capsys, "info", "tiny")
    assert code == 0
    assert "28,589,128" in out and "4.456" in out and "(768, 7, 7)" in out



def test_info_v2(capsys):
    """ConvNeXt V2-T: V1's 28.59M parameters less each block's layer scale (C) plus its GRN (2 x 4C);
    the same MACs (GRN, like LayerNorm, is not counted)."""
    code, out, _ = run(capsys, "info", "tiny", "--v2")
    assert code == 0 and out.startswith("ConvNeXt V2 tiny")
    assert f"{28_589_128 + 7 * (3 * 96 + 3 * 192 + 9 * 384 + 3 * 768):,d}" in out and "4.456" in out
    code, out, _ = run(capsys, "info", "huge", "--v2")
    assert code == 0 and "(2816, 7, 7)" in out
    code, out, _ = run(capsys, "info", str(FIXTURES / "v2-timm-fcmae"))
    assert code == 0 and out.startswith("ConvNeXt V2 custom")
    code, _, err = run(capsys, "info", str(FIXTURES / "v2-timm-fcmae"), "--v2")
    assert code == 2 and "--v2 takes a variant" in err


def test_console_script_help():
    """The installed entry point runs, and every command has --help with examples."""
    for command in ([], ["classify"], ["features"], ["convert"], ["info"]):
        result = subprocess.run([sys.executable, "-m", "convnext_np.cli", *command, "--help"],
                                capture_output=True, text=True, check=True)
        assert "usage: convnext-np" in result.stdout
        if command:
            assert "examples:" in result.stdout
