"""The docs can't rot: every example script runs, the figures render, and what the docs state
about the code (the `info` table, the weights crosswalk, the porting snippet) is checked here."""

import ast
import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
from PIL import Image

import convnext_np as cnp
from conftest import IMAGE_DIR, ROOT
from convnext_np import backends, golden, weights
from convnext_np.cli import main
from convnext_np.summary import stage_rows

DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"


# One BLAS thread: on a busy machine OpenBLAS's threads spin, and a 2 s script takes 20.
SERIAL = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_script(path, *args, cwd):
    """Run a script as a user would, from a directory that is not the repository."""
    done = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=SERIAL)
    assert done.returncode == 0, f"{path.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "classify_image.py", "export_golden.py", "extract_features.py", "fit_head_digits.py",
        "switch_backends.py"]


def test_classify_image(tmp_path):
    out = run_script(EXAMPLES / "classify_image.py", cwd=tmp_path)
    ranks = re.findall(r"^\s+(\d)\.\s+([\d.]+)%\s+LABEL_(\d)", out, re.M)
    assert [r[0] for r in ranks] == ["1", "2", "3", "4", "5"]
    scores = [float(r[1]) for r in ranks]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 100.01


def test_extract_features(tmp_path):
    out = run_script(EXAMPLES / "extract_features.py", cwd=tmp_path)
    assert "stage4   (3, 44, 7, 7)" in out and "pooled   (3, 44)" in out
    diagonal = re.findall(r"^\s+chelsea\s+([\d.]+)", out, re.M)
    assert diagonal == ["1.000"]


def test_switch_backends(tmp_path):
    out = run_script(EXAMPLES / "switch_backends.py", cwd=tmp_path)
    assert re.search(r"^numpy\s+[\d.]+ ms\s+max \|logits - numpy\| 0\.00e\+00\s+agrees$", out, re.M)
    for name in backends.BACKENDS:
        assert re.search(rf"^{name}\s", out, re.M), name  # each registered backend ran or said why not


def test_fit_head_digits(tmp_path):
    pytest.importorskip("sklearn")
    out = run_script(EXAMPLES / "fit_head_digits.py", "--limit", "600", "--backend", "numpy",
                     "--work", tmp_path, cwd=tmp_path)
    validation = float(re.search(r"validation accuracy ([\d.]+)%", out).group(1))
    test = float(re.search(r"test images: top-1 ([\d.]+)%", out).group(1))
    assert validation > 50 and test > 50, out  # chance is 10%
    assert "fit_head: 10 classes, 380 training and 96 validation images" in out  # 476 of 600
    loaded = cnp.from_pretrained(tmp_path / "digits-classifier")
    assert [loaded.config.id2label[i] for i in range(10)] == [str(d) for d in range(10)]


def test_export_golden(tmp_path):
    out = run_script(EXAMPLES / "export_golden.py", "--out", tmp_path / "bundle", cwd=tmp_path)
    assert "verdict: PASS" in out
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["images"]] == ["chelsea.png", "camera.png"]
    assert golden.check_bundle(tmp_path / "bundle").ok


def test_make_figures(tmp_path):
    """The committed figures are what the script draws now, pixel for pixel (decoded, so a
    different zlib or PNG encoder does not matter; the text needs the same font)."""
    out = run_script(DOCS / "make_figures.py", "--out", tmp_path, cwd=tmp_path)
    for name in ("stages.png", "feature_maps.png"):
        path = tmp_path / name
        assert name in out and path.stat().st_size < 300_000
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 800
            drawn = np.asarray(image.convert("RGB"))
        committed = DOCS / "figures" / name
        assert committed.is_file() and committed.stat().st_size < 300_000
        with Image.open(committed) as image:
            kept = np.asarray(image.convert("RGB"))
        assert drawn.shape == kept.shape, f"{name}: rerun docs/make_figures.py and commit"
        if not has_font("DejaVuSans.ttf"):
            continue  # the labels would be drawn in another font: only the size can agree
        differ = np.abs(drawn.astype(int) - kept).max(axis=-1) > 0
        assert not differ.any(), (f"{name}: {differ.mean():.2%} of the pixels differ from the "
                                  "committed figure; rerun docs/make_figures.py and commit")


def test_fit_gelu_gives_the_kernels_constants(tmp_path):
    """The Numba GELU's rational function is the one docs/fit_gelu.py fits: compared as
    functions on [0, 5.5], within twice the fit's own weighted error (7e-8), so that another
    HiGHS stopping a step at a slightly different point does not matter; and the fit is good."""
    from convnext_np import kernels

    out = run_script(DOCS / "fit_gelu.py", cwd=tmp_path)
    fitted = dict(re.findall(r"^(_GELU_[PQ]) = (\(.*\))$", out, re.M))
    a = np.linspace(0.0, 5.5, 10001)

    def tail(p, q):
        return np.polyval(np.array(p, np.float64)[::-1], a) / np.polyval(np.array(q, np.float64)[::-1], a)

    theirs = tail(ast.literal_eval(fitted["_GELU_P"]), ast.literal_eval(fitted["_GELU_Q"]))
    ours = tail(kernels._GELU_P, kernels._GELU_Q)
    assert (np.maximum(a, 0.35) * np.abs(theirs - ours)).max() < 1.5e-7, \
        "kernels._GELU_P/_GELU_Q are not what docs/fit_gelu.py fits: rerun it and paste its output"
    assert float(re.search(r"float32 without FMAs: (\S+)", out)[1]) < 3.2e-7


def has_font(name):
    from PIL import ImageFont
    try:
        ImageFont.truetype(name, 12)
    except OSError:
        return False
    return True


def test_architecture_doc_pastes_the_info_output():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ convnext-np info tiny\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md must show `$ convnext-np info tiny` and its output"
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["info", "tiny"]) == 0
    assert block.group(1) == buffer.getvalue()
    # The per-block formula the doc derives, against the stage rows.
    stage1 = stage_rows(cnp.ConvNextConfig.from_variant("tiny"))[1]
    assert "8C² + 58C" in text and stage1["params"] == 3 * (8 * 96 ** 2 + 58 * 96)
    assert "H·W·C·(49 + 8C)" in text and stage1["macs"] == 3 * 56 * 56 * 96 * (49 + 8 * 96)



def test_architecture_doc_pastes_the_v2_info_output():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ convnext-np info tiny --v2\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md must show `$ convnext-np info tiny --v2` and its output"
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["info", "tiny", "--v2"]) == 0
    assert block.group(1) == buffer.getvalue()
    stage1 = stage_rows(cnp.ConvNextConfig.from_variant("tiny", model_type="convnextv2"))[1]
    assert "8C² + 65C" in text and stage1["params"] == 3 * (8 * 96 ** 2 + 65 * 96)


def crosswalk_rows():
    text = (DOCS / "weights.md").read_text(encoding="utf-8")
    section = text.split("## The crosswalk")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1].startswith("`"):
            rows.append([c.strip("`") for c in cells])
    return rows


def test_weights_crosswalk_is_true_to_the_code():
    rows = crosswalk_rows()
    config = cnp.ConvNextConfig.from_variant("tiny")  # the doc's shapes: tiny, s = 2, K = 1000
    table = {name: (path, shape) for path, name, shape in weights.param_table(config)}
    for part, hf, timm, fb, torch_shape, ours, our_shape in rows:
        key = lambda k: k.format(s=2, b=0)  # noqa: E731
        name = key(hf)
        assert name in table, (part, name)
        path, shape = table[name]
        assert str(shape) == torch_shape, part
        tree = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        assert tree == key(ours), part
        assert str(weights.torch_to_ours(name, np.zeros(shape, np.float32)).shape) == our_shape, part
        for scheme, k in (("timm", timm), ("fb", fb), ("hf", hf)):
            assert list(weights.to_hf_names({key(k): np.zeros(shape)}, scheme, "doc")) == [name], (scheme, k)
    assert len(rows) == 21  # every kind of tensor: 4 stem, 4 downsampling, 9 block, 4 head


def test_weights_v2_table_is_true_to_the_code():
    text = (DOCS / "weights.md").read_text(encoding="utf-8")
    section = text.split("## ConvNeXt V2")[1].split("\n## ")[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| GRN")]
    config = cnp.ConvNextConfig.from_variant("tiny", model_type="convnextv2")
    table = {name: (path, shape) for path, name, shape in weights.param_table(config)}
    for part, hf, timm, fb, torch_shape, ours, our_shape in rows:
        key = lambda k: k.format(s=2, b=0)  # noqa: E731
        name = key(hf).replace("convnextv2.", "convnext.", 1)  # the canonical name
        path, shape = table[name]
        assert str(shape) == torch_shape, part
        assert ".".join(map(str, path)) == key(ours).replace("[", ".").replace("]", ""), part
        assert str(weights.torch_to_ours(name, np.zeros(shape, np.float32)).shape) == our_shape, part
        for scheme, k, k_shape in (("timm", timm, shape[-1:]), ("fb", fb, shape), ("hf", hf, shape)):
            hf_named = weights.to_hf_names({key(k): np.zeros(k_shape)}, scheme, "doc")
            assert list(hf_named) == [name] and hf_named[name].shape == shape, (scheme, k)
    assert len(rows) == 2


def test_porting_doc_snippet_runs(tmp_path):
    text = (DOCS / "porting.md").read_text(encoding="utf-8")
    code = re.search(r"## 3\. In Python.*?```python\n(.*?)```", text, re.S).group(1)
    model = cnp.from_pretrained(ROOT / "weights" / "fixtures" / "hf-safetensors")
    images = [IMAGE_DIR / n for n in ("coffee.png", "logo.png")]
    golden.write_bundle([str(p) for p in images], model, tmp_path)

    def my_port(pixel_values):
        out = model(pixel_values, output_hidden_states=True)
        return {**{f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)},
                "pooled": out.pooled, "logits": out.logits}

    code = code.replace('Path("golden/tiny")', f"Path({str(tmp_path)!r})")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        exec(compile(code, "docs/porting.md", "exec"), {"my_port": my_port})
    out = buffer.getvalue()
    assert out.rstrip().endswith("PASS") and out.count(" ok") == 7, out
