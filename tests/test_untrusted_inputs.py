"""Inputs an attacker or a careless user would try, each with the outcome we promise: a
WeightsError or ImageError naming the input (exit 2 or 1 from the CLI), or a correct result;
never a hang, a blow-up in memory, or a traceback. Files are made without torch where we can,
and with torch too where it is installed (the ``reference`` extra)."""

import argparse
import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl
from PIL import Image
from safetensors.numpy import load_file, save_file

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np import golden, guards, threads, torch_pickle
from convnext_np.classify import iter_classify
from convnext_np.cli import EXIT_BROKEN_PIPE, main
from convnext_np.preprocess import ImageProcessor, load_rgb
from torchfile import Tensor, pickled_body, write_checkpoint

PHOTO = Path(__file__).parent / "data" / "images" / "chelsea.png"
MODEL = FIXTURES / "hf-safetensors"
FB_PTH = FIXTURES / "fb-pth" / "checkpoint.pth"


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch (the reference extra) makes this file")


@pytest.fixture
def hf_copy(tmp_path):
    shutil.copytree(MODEL, tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def timm_copy(tmp_path):
    shutil.copytree(FIXTURES / "timm", tmp_path / "timm")
    return tmp_path / "timm"


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def fb_state_dict() -> dict:
    return torch_pickle.load(FB_PTH)["model"]


class Budget:
    """Fails the test if the block allocates more than ``mb`` MB through NumPy or Python
    (tracemalloc sees both) or runs longer than ``seconds``."""

    def __init__(self, mb=64, seconds=20):
        self.mb, self.seconds = mb, seconds

    def __enter__(self):
        tracemalloc.start()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        elapsed = time.monotonic() - self.start
        assert peak < self.mb, f"allocated {peak:.0f} MB before rejecting"
        assert elapsed < self.seconds, f"took {elapsed:.1f} s"


# --- 1. no hang ---------------------------------------------------------------------------------
def test_checkpoint_that_contains_itself_is_refused(tmp_path):
    d = {}
    d["model"] = d
    path = write_checkpoint(tmp_path / "loop.pth", None, pkl=pickle.dumps(d, protocol=2))
    with Budget(), pytest.raises(cnp.WeightsError, match="contains itself"):
        cnp.from_pretrained(path)


def test_torch_saved_checkpoint_that_contains_itself_is_refused(tmp_path):
    torch = torch_or_skip()
    d = {}
    d["model"] = d
    torch.save(d, tmp_path / "loop.pth")
    with Budget(), pytest.raises(cnp.WeightsError, match="contains itself"):
        cnp.from_pretrained(tmp_path / "loop.pth")


def test_wrappers_nested_too_deep_are_refused(tmp_path):
    obj = fb_state_dict()
    obj = {k: Tensor(np.asarray(v)) for k, v in obj.items()}
    for _ in range(20):
        obj = {"model": obj}
    with pytest.raises(cnp.WeightsError, match="nested more than"):
        cnp.from_pretrained(write_checkpoint(tmp_path / "deep.pth", obj))


def test_shard_index_that_lists_itself_is_refused(tmp_path):
    shutil.copytree(FIXTURES / "hf-sharded", tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    first = next(iter(d["weight_map"]))
    d["weight_map"][first] = "model.safetensors.index.json"
    index.write_text(json.dumps(d))
    with Budget(), pytest.raises(cnp.WeightsError, match="not a weights file name"):
        cnp.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("shard", [5, "../elsewhere/model.safetensors", None])
def test_shard_names_must_be_file_names(tmp_path, shard):
    shutil.copytree(FIXTURES / "hf-sharded", tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    d["weight_map"][next(iter(d["weight_map"]))] = shard
    index.write_text(json.dumps(d))
    with pytest.raises(cnp.WeightsError, match="index.json"):
        cnp.from_pretrained(tmp_path / "m")


# --- 2. one image does not kill the batch -------------------------------------------------------
def dds_header() -> bytes:
    """128 bytes: a DDS header whose pixel format (FourCC "ABCD") Pillow does not implement."""
    header = bytearray(124)
    struct.pack_into("<7I", header, 0, 124, 0x1007, 64, 64, 0, 0, 1)  # size, flags, h, w, ...
    struct.pack_into("<2I4s", header, 72, 32, 0x4, b"ABCD")  # pixel format: size, FOURCC, code
    return b"DDS " + bytes(header)


@pytest.fixture
def dds_png(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(dds_header())
    with pytest.raises(NotImplementedError):  # the premise: Pillow raises outside its contract
        Image.open(path).load()
    return path


def test_dds_under_a_png_name_is_that_images_error(dds_png):
    model = cnp.from_pretrained(MODEL, backend="numpy")
    results = list(iter_classify([PHOTO, dds_png, PHOTO], model, top_k=1))
    assert [r[2] is None for r in results] == [True, False, True]
    assert isinstance(results[1][2], cnp.ImageError) and "photo.png" in str(results[1][2])
    assert "NotImplementedError" in str(results[1][2])


def test_cli_goes_on_past_a_dds_under_a_png_name(capsys, dds_png):
    code = main(["classify", str(dds_png), str(PHOTO), "--model", str(MODEL), "--format", "jsonl"])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "Traceback" not in err and "photo.png" in err
    assert "error" in lines[0] and "predictions" in lines[1]


@pytest.mark.parametrize("error", [NotImplementedError("no"), IndexError("tuple index"),
                                   struct.error("unpack"), MemoryError(), KeyError("k"),
                                   ZeroDivisionError("division by zero")])
def test_any_exception_while_decoding_is_an_image_error(error):
    with pytest.raises(cnp.ImageError, match="^x.png: cannot read image"):
        with guards.decoding("x.png"):
            raise error


# --- 3. memory before rejection -----------------------------------------------------------------
def test_a_view_larger_than_its_storage_is_refused(tmp_path):
    one = Tensor(np.zeros(1), size=(16000, 16000), stride=(0, 0))
    path = write_checkpoint(tmp_path / "expand.pth", {"stem.0.weight": one})
    with Budget(), pytest.raises(cnp.WeightsError, match="views more elements than its storage"):
        cnp.from_pretrained(path)


def test_a_torch_saved_expanded_tensor_is_refused(tmp_path):
    torch = torch_or_skip()
    torch.save({"stem.0.weight": torch.zeros(1).expand(16000, 16000)}, tmp_path / "expand.pth")
    assert (tmp_path / "expand.pth").stat().st_size < 4000
    with Budget(), pytest.raises(cnp.WeightsError, match="views more elements than its storage"):
        cnp.from_pretrained(tmp_path / "expand.pth")


def test_a_compressed_pickle_bomb_is_refused_before_inflating(tmp_path):
    size = 8 * torch_pickle.MAX_PICKLE_BYTES  # a 64 MB string
    bomb = b"\x80\x02" + b"X" + struct.pack("<I", size) + b"a" * size + b"."
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", bomb, compress_type=zipfile.ZIP_DEFLATED)
    del bomb
    assert path.stat().st_size < 1_000_000
    with Budget(), pytest.raises(cnp.WeightsError, match="more than the"):
        cnp.from_pretrained(path)


def test_a_small_compressed_pickle_still_loads(tmp_path):
    sd = {k: Tensor(np.asarray(v)) for k, v in fb_state_dict().items()}
    path = write_checkpoint(tmp_path / "deflated.pth", {"model": sd}, compress_pkl=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(cnp.from_pretrained(path, backend="numpy")(x).logits,
                                  cnp.from_pretrained(FB_PTH, backend="numpy")(x).logits)


def test_a_head_of_ten_million_classes_is_refused_before_labels(tmp_path):
    tensors = load_file(FIXTURES / "fb-safetensors" / "checkpoint.safetensors")
    tensors["head.weight"] = np.zeros((10**7, 0), np.float32)
    save_file(tensors, tmp_path / "head.safetensors")
    with Budget(), pytest.raises(cnp.WeightsError, match="not a plausible classification head"):
        cnp.from_pretrained(tmp_path / "head.safetensors")


def test_num_labels_of_ten_million_is_refused(hf_copy):
    d = json.loads((hf_copy / "config.json").read_text())
    del d["id2label"], d["label2id"]
    d["num_labels"] = 10**7
    (hf_copy / "config.json").write_text(json.dumps(d))
    with Budget(), pytest.raises(cnp.WeightsError, match="num_labels"):
        cnp.from_pretrained(hf_copy)


def test_timm_input_size_beyond_the_bound_is_refused(timm_copy):
    d = json.loads((timm_copy / "config.json").read_text())
    d["pretrained_cfg"]["input_size"] = [3, 30000, 30000]
    (timm_copy / "config.json").write_text(json.dumps(d))
    with Budget(), pytest.raises(cnp.WeightsError, match=f"to {guards.MAX_INPUT_SIZE}"):
        cnp.from_pretrained(timm_copy)


# --- 4. a WeightsError, not a traceback --------------------------------------------------------
def test_num_labels_infinity_is_refused(hf_copy):
    text = (hf_copy / "config.json").read_text().replace('"hidden_act"', '"num_labels": Infinity, "hidden_act"')
    (hf_copy / "config.json").write_text(text)
    with pytest.raises(cnp.WeightsError, match="config.json.*Infinity"):
        cnp.from_pretrained(hf_copy)


@pytest.mark.parametrize("labels", [10, "abcdefghij", [1, 2, 3], {"0": "a"}])
def test_timm_label_names_must_be_a_list_of_strings(timm_copy, labels):
    edit_json(timm_copy / "config.json", label_names=labels)
    with pytest.raises(cnp.WeightsError, match="config.json: label_names must be a list of strings"):
        cnp.from_pretrained(timm_copy)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_refused_everywhere(hf_copy, tmp_path):
    deep = nested(100_000)
    config = hf_copy / "config.json"
    original = config.read_text()
    config.write_text(original[:-2] + f', "deep": {deep}}}')
    with pytest.raises(cnp.WeightsError, match="config.json.*nested more than"):
        cnp.from_pretrained(hf_copy)
    config.write_text(original)
    (hf_copy / "preprocessor_config.json").write_text(f'{{"size": {deep}}}')
    with pytest.raises(cnp.WeightsError, match="preprocessor_config.json.*nested more than"):
        cnp.from_pretrained(hf_copy)
    header = f'{{"__metadata__": {{"x": {deep}}}}}'.encode()
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(cnp.WeightsError, match="deep.safetensors.*nested more than"):
        cnp.from_pretrained(tmp_path / "deep.safetensors")


def test_json_nesting_up_to_the_bound_is_fine():
    assert guards.load_json(nested(guards.MAX_JSON_DEPTH), "x") is not None
    with pytest.raises(cnp.WeightsError, match="nested"):
        guards.load_json(nested(guards.MAX_JSON_DEPTH + 1), "x")
    with pytest.raises(cnp.WeightsError, match="not finite"):
        guards.load_json("[1e999]", "x")


@pytest.mark.parametrize("field", ["compute", "model", "tensors"])
def test_golden_manifest_missing_a_field_is_a_clear_error(tmp_path, field):
    model = cnp.from_pretrained(MODEL, backend="numpy")
    golden.write_bundle([PHOTO], model, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del manifest[field]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(cnp.ConvNextError, match=f"manifest lacks {field}"):
        golden.check_bundle(tmp_path / "b", model)


@pytest.mark.parametrize("edit, message", [
    ({"size": {"shortest_edge": 16}}, "size must be an int from at least 32"),
    ({"size": {"shortest_edge": 30000}}, "size must be an int from at least 32"),
    ({"image_mean": "abc"}, "image_mean must be 3 finite numbers"),
    ({"image_mean": [0.5, "NaN", 0.5]}, "image_mean must be 3 finite numbers"),
    ({"image_std": [0.5, 0.5, 1e999]}, "Infinity is not a number"),
    ({"image_std": [0.5, 0.5, 0]}, "image_std must be positive"),
    ({"rescale_factor": "x"}, "rescale_factor must be a positive number"),
    ({"crop_pct": "0.9"}, "crop_pct must be a number"),
    ({"do_resize": "yes"}, "do_resize must be true or false"),
    ({"resample": [3]}, "resample must be one of"),
])
def test_bad_preprocessing_configs_are_refused_at_load(hf_copy, edit, message):
    (hf_copy / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 224}, **edit}))
    with pytest.raises(cnp.WeightsError, match="preprocessor_config.json: .*" + message):
        cnp.from_pretrained(hf_copy)


def test_nan_in_preprocessing_json_is_refused(hf_copy):
    (hf_copy / "preprocessor_config.json").write_text('{"image_mean": [NaN, 0.5, 0.5]}')
    with pytest.raises(cnp.WeightsError, match="preprocessor_config.json.*NaN"):
        cnp.from_pretrained(hf_copy)


@pytest.mark.parametrize("input_size", ["224", [3, 224], [3, "224", "224"], 224, [3, 224, 200]])
def test_bad_timm_input_size_is_refused_at_load(timm_copy, input_size):
    d = json.loads((timm_copy / "config.json").read_text())
    d["pretrained_cfg"]["input_size"] = input_size
    (timm_copy / "config.json").write_text(json.dumps(d))
    with pytest.raises(cnp.WeightsError, match="config.json.*input_size"):
        cnp.from_pretrained(timm_copy)


# --- 5. outputs are checked before the work -----------------------------------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    """The command must stop before it loads (and runs) the model."""
    import convnext_np.cli as cli

    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("loaded the model"))
    monkeypatch.setattr(cli, "load_or_report", lambda args: pytest.fail("loaded the model"))


def test_features_into_a_missing_folder_fails_before_compute(capsys, tmp_path, no_model_load):
    code = main(["features", str(PHOTO), "--model", str(MODEL), "-o", str(tmp_path / "missing" / "f.npy")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_features_onto_a_directory_fails_before_compute(capsys, tmp_path, no_model_load):
    (tmp_path / "f.npy").mkdir()
    code = main(["features", str(PHOTO), "--model", str(MODEL), "-o", str(tmp_path / "f.npy")])
    assert code == 2 and "is a directory" in capsys.readouterr().err


def test_features_into_an_unwritable_folder_fails_before_compute(capsys, no_model_load):
    folder = Path("/proc/1")  # not writable, not even by root
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no unwritable folder at hand")
    code = main(["features", str(PHOTO), "--model", str(MODEL), "-o", str(folder / "f.npy")])
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_convert_and_golden_onto_an_existing_file_exit_2(capsys, tmp_path, no_model_load):
    (tmp_path / "taken").write_text("a file")
    assert main(["convert", str(MODEL), str(tmp_path / "taken")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["golden", str(PHOTO), "--model", str(MODEL), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err


def cli(*args, **kwargs):
    return [sys.executable, "-m", "convnext_np.cli", *args]


def test_a_closed_pipe_ends_quietly(tmp_path):
    images = []
    for i in range(6):
        images.append(tmp_path / f"{i}.png")
        shutil.copy(PHOTO, images[-1])
    proc = subprocess.Popen(cli("classify", *map(str, images), "--model", str(MODEL), "-b", "1",
                                "-f", "jsonl", "--backend", "numpy"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert json.loads(first)["image"] == str(images[0])
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE and "Traceback" not in err, err


def test_a_full_disk_is_a_clear_error():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        result = subprocess.run(cli("classify", str(PHOTO), "--model", str(MODEL), "--backend", "numpy"),
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write the output" in result.stderr and "No space left" in result.stderr


def test_broken_pipe_in_process(capsys, monkeypatch):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["info", "tiny"]) == EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


# --- 6. contract gaps ---------------------------------------------------------------------------
@pytest.fixture
def headless(tmp_path):
    d = tmp_path / "backbone"
    shutil.copytree(MODEL, d)
    tensors = {k: v for k, v in load_file(d / "model.safetensors").items() if not k.startswith("classifier.")}
    save_file(tensors, d / "model.safetensors")
    return d


def test_classify_with_a_headless_model_exits_2(capsys, headless):
    assert cnp.from_pretrained(headless).config.num_labels == 0
    code = main(["classify", str(PHOTO), "--model", str(headless)])
    err = capsys.readouterr().err
    assert code == 2 and "no classification head" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["classify"], ["features", "-o", "OUT/f.npy"], ["golden", "--out", "OUT/g"]])
def test_no_images_found_exits_2_everywhere(capsys, tmp_path, command, no_model_load):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("OUT", str(tmp_path)) for a in command]
    assert main([*argv[:1], str(tmp_path / "empty"), *argv[1:], "--model", str(MODEL)]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("argv", [["info", "tiny", "--size", "31"], ["info", "tiny", "--width", "0"]])
def test_info_below_32_pixels_is_a_usage_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "at least 32" in capsys.readouterr().err


def test_an_empty_model_name_is_refused(capsys, tmp_path, monkeypatch):
    shutil.copytree(MODEL, tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")  # a model here that "" must not load
    with pytest.raises(cnp.WeightsError, match="empty model name"):
        cnp.from_pretrained("")
    assert main(["classify", str(PHOTO), "--model", ""]) == 2
    assert "empty model name" in capsys.readouterr().err


# --- 7. facebookresearch training checkpoints ----------------------------------------------------
def training_state(model):
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3, "params": [0, 1]}]},
            "epoch": 299, "scaler": {"scale": 65536.0, "_growth_tracker": 0}}


def test_facebookresearch_training_checkpoint_loads_without_torch(tmp_path, caplog):
    sd = {k: Tensor(np.asarray(v)) for k, v in fb_state_dict().items()}
    state = training_state(sd)
    state["epoch"] = pickled_body(np.int64(299))
    state["args"] = pickled_body(argparse.Namespace(model="convnext_tiny", lr=4e-3, input_size=224))
    path = write_checkpoint(tmp_path / "checkpoint-best.pth", state)
    loaded = torch_pickle.load(path)
    assert loaded["epoch"] == 299 and isinstance(loaded["args"], torch_pickle.IgnoredObject)
    with caplog.at_level(logging.INFO, logger="convnext_np"):
        model = cnp.from_pretrained(path, backend="numpy")
    assert "ignoring args, epoch, optimizer, scaler" in caplog.text
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(model(x).logits, cnp.from_pretrained(FB_PTH, backend="numpy")(x).logits)


def test_facebookresearch_training_checkpoint_saved_by_torch_loads(tmp_path):
    torch = torch_or_skip()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in fb_state_dict().items()}
    state = training_state(sd)
    state["epoch"] = np.int64(299)
    state["args"] = argparse.Namespace(model="convnext_tiny", lr=4e-3)
    state["optimizer"]["state"] = {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(5.0)}}
    torch.save(state, tmp_path / "checkpoint.pth")
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(cnp.from_pretrained(tmp_path / "checkpoint.pth", backend="numpy")(x).logits,
                                  cnp.from_pretrained(FB_PTH, backend="numpy")(x).logits)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("extra, refused", [
    (pickled_body(Evil()), "os.system|posix.system"),
    (pickled_body(np.arange(3)), "_reconstruct"),
    (pickled_body(np.dtype("O")), "NumPy dtype 'O8'|NumPy dtype 'O'"),
    (pickled_body(argparse.ArgumentParser), "argparse.ArgumentParser"),
])
def test_training_state_stand_ins_admit_nothing_else(tmp_path, extra, refused):
    sd = {k: Tensor(np.asarray(v)) for k, v in fb_state_dict().items()}
    path = write_checkpoint(tmp_path / "c.pth", {"model": sd, "args": extra})
    with pytest.raises(cnp.WeightsError, match=refused):
        cnp.from_pretrained(path)


# --- 8. no silent garbage -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad):
    tensors = load_file(FIXTURES / "fb-safetensors" / "checkpoint.safetensors")
    tensors["stages.2.1.pwconv1.weight"] = tensors["stages.2.1.pwconv1.weight"].copy()
    tensors["stages.2.1.pwconv1.weight"][3, 4] = bad
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(cnp.WeightsError, match="'stages.2.1.pwconv1.weight' holds NaN or infinite"):
        cnp.from_pretrained(tmp_path / "bad.safetensors")


def test_sixteen_bit_pgm_and_tiff_are_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
    for name in ("grey16.pgm", "grey16.tif"):
        Image.fromarray(grey).save(tmp_path / name)
        opened = Image.open(tmp_path / name)
        assert opened.mode in ("I", "I;16"), opened.mode
        ours = np.asarray(load_rgb(tmp_path / name))
        np.testing.assert_array_equal(ours[..., 0], np.round(grey / 257))
        assert (ours[..., 0] == ours[..., 2]).all()


def test_mode_i_with_eight_bit_values_stays_as_it_is():
    eight = np.arange(256, dtype=np.int32).reshape(16, 16)
    img = Image.fromarray(eight)
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_rgb(img))[..., 1], eight)


def test_float_tiff_in_zero_to_one_is_scaled(tmp_path):
    x = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(x).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    ours = np.asarray(load_rgb(tmp_path / "float.tif"))[..., 0]
    np.testing.assert_array_equal(ours, np.round(x.astype(np.float64) * 255))


# --- 9. threads ---------------------------------------------------------------------------------
def run_concurrently(fn, args):
    errors, workers = [], []
    for a in args:
        def body(a=a):
            try:
                fn(a)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
        workers.append(threading.Thread(target=body))
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors


def probe_threads(monkeypatch, backend, probe):
    from convnext_np import backends

    module = backends.get(backend)
    seen, pool = [], module.global_avg_pool
    monkeypatch.setattr(module, "global_avg_pool",
                        lambda x: (seen.append((threading.get_ident(), probe())), pool(x))[1])
    return seen


def test_concurrent_num_threads_calls_restore_blas(monkeypatch):
    if threads.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    before = threads.blas_threads()
    seen = probe_threads(monkeypatch, "numpy", threads.blas_threads)
    models = {n: cnp.from_pretrained(MODEL, backend="numpy", num_threads=n) for n in (1, 2)}
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    expected = models[1](x).logits

    def call(n):
        for _ in range(5):
            np.testing.assert_allclose(models[n](x).logits, expected, rtol=0, atol=1e-5)

    run_concurrently(call, [1, 2, 1, 2, 1, 2])
    assert threads.blas_threads() == before  # not left at 1 by overlapping calls
    assert all(count <= 2 for _, count in seen) and len(seen) == 31


def test_overlapping_num_threads_calls_restore_blas_in_any_order(monkeypatch):
    """A (1 thread) starts, B (2 threads) starts, A returns, B returns: the count must come back
    to what it was before A, not to the 1 that B found when it started."""
    if threads.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    from convnext_np import backends

    blas = threadpoolctl.threadpool_limits(limits=3, user_api="blas")  # a count neither call asks for
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    module = backends.get("numpy")
    pool, seen = module.global_avg_pool, {}

    def hook(x):
        name = threading.current_thread().name
        seen[name] = threads.blas_threads()
        if name == "A":
            a_in.set()
            assert b_in.wait(30)
        else:
            b_in.set()
            assert a_out.wait(30)
            seen["B after A"] = threads.blas_threads()
        return pool(x)

    monkeypatch.setattr(module, "global_avg_pool", hook)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    models = {n: cnp.from_pretrained(MODEL, backend="numpy", num_threads=n) for n in (1, 2)}

    def a():
        models[1](x)
        a_out.set()

    try:
        ta = threading.Thread(target=a, name="A")
        tb = threading.Thread(target=lambda: (a_in.wait(30), models[2](x)), name="B")
        ta.start(), tb.start()
        ta.join(60), tb.join(60)
        assert seen == {"A": 1, "B": 1, "B after A": 2}  # the smallest count while both run
        assert threads.blas_threads() == 3
    finally:
        blas.restore_original_limits()


def test_numpy_backend_runs_a_batch_in_groups_one_thread_each(monkeypatch):
    """Every output of a grouped call (DINOv3: the token sequence too; a backbone's maps) is the
    whole batch's, in order, and equals the ungrouped call's; each group ran in its own thread
    with the BLAS on one thread, and the count is restored afterwards."""
    if threads.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    before = threads.blas_threads()
    seen = probe_threads(monkeypatch, "numpy", threads.blas_threads)
    path = FIXTURES.parent / "family" / "hf-dinov3"
    grouped, whole = (cnp.from_pretrained(path, backend="numpy", num_threads=n, out_features=["stem", "stage4"])
                      for n in (2, 1))
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    a = grouped(x, output_hidden_states=True)
    in_groups = len(seen)  # global_avg_pool runs twice a group: the head, and the token sequence
    assert in_groups == 4 and all(count == 1 for _, count in seen)
    idents = {ident for ident, _ in seen}
    assert len(idents) == 2 and threading.get_ident() in idents  # the caller's thread and one more
    assert a.last_hidden_state is a.hidden_states[-1]  # as an ungrouped call returns it
    b = whole(x, output_hidden_states=True)
    assert {ident for ident, _ in seen[in_groups:]} == {threading.get_ident()}  # one group: the caller's thread
    assert threads.blas_threads() == before
    for name in ("logits", "pooled", "last_hidden_state", "sequence", "hidden_states", "feature_maps"):
        ours, theirs = getattr(a, name), getattr(b, name)
        if name == "logits" and theirs is None:
            continue
        assert ours is not None, name
        for u, v in zip(*((o,) if isinstance(o, np.ndarray) else o for o in (ours, theirs)), strict=True):
            assert u.shape == v.shape and u.shape[0] == 3
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-5, err_msg=name)


def test_image_groups_follow_the_threads_not_a_running_calls_limit():
    """One group per thread, at most one per image; without num_threads, the BLAS count the user
    set, not the 1 that another call's groups have set meanwhile."""
    if threads.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        assert [threads.image_groups(n, None) for n in (1, 2, 8)] == [1, 2, 3]
        assert threads.image_groups(8, 1) == 1 and threads.image_groups(8, 4) == 4
        started, release = threading.Event(), threading.Event()
        worker = threading.Thread(target=threads.over_images, args=(
            lambda part: (started.set(), release.wait(30)), np.zeros(2), 2))
        worker.start()
        try:
            assert started.wait(30) and threads.blas_threads() == 1
            assert threads.image_groups(8, None) == 3
        finally:
            release.set()
            worker.join(30)
        assert threads.blas_threads() == 3


def test_a_failing_group_raises_after_all_groups_end_and_restores_blas():
    if threads.blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS here")
    before, ended = threads.blas_threads(), []

    def run(part):
        if part[0] == 0:
            raise ValueError("group 0 failed")
        time.sleep(0.2)
        ended.append(part[0])
        return part

    with pytest.raises(ValueError, match="group 0 failed"):
        threads.over_images(run, np.arange(4), 2)
    assert ended == [2] and threads.blas_threads() == before
    assert [list(p) for p in threads.over_images(lambda part: part * 10, np.arange(5), 3)] == [[0, 10], [20, 30], [40]]


def test_omp_num_threads_reaches_numba_in_every_calling_thread(monkeypatch):
    numba = pytest.importorskip("numba")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    seen = probe_threads(monkeypatch, "numba", numba.get_num_threads)
    model = cnp.from_pretrained(MODEL, backend="numba")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    after = []

    def call(_):
        model(x)
        after.append(numba.get_num_threads())

    run_concurrently(call, range(4))
    assert len(seen) == 4 and all(count == 1 for _, count in seen), seen
    assert after == [numba.config.NUMBA_NUM_THREADS] * 4  # each thread's own count is restored
