"""Loading is strict and all-or-nothing; every error names the file, the key and the shapes."""

import json
import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from safetensors.numpy import save_file

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np import torch_pickle, weights
from convnext_np.files import atomic_write, read_state_dict
from convnext_np.safetensors_file import SafetensorsFile
from convnext_np.testing import random_pixels

HF = FIXTURES / "hf-safetensors"


@pytest.fixture
def hf_copy(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(HF, target)
    return target


def tensors(path):
    f = SafetensorsFile(path)
    return {k: np.array(f.tensor(k)) for k in f.keys()}


def test_local_path_loads_and_names_its_source():
    model = cnp.from_pretrained(HF)
    assert model.source == str(HF)
    assert model.config.layer_norm_eps == 1e-12  # HF's config, used for the final norm only
    assert model.config.norm_eps == 1e-6
    assert "ConvNeXt" in repr(model)


def test_timm_and_fb_use_eps_1e6_for_the_final_norm():
    for source in (FIXTURES / "timm", FIXTURES / "fb-pth" / "checkpoint.pth"):
        assert cnp.from_pretrained(source).config.layer_norm_eps == 1e-6


@pytest.mark.parametrize("mutation, message", [
    (lambda sd: sd.pop("convnext.encoder.stages.2.layers.1.pwconv1.bias"), "missing 1 tensor: 'convnext.encoder.stages.2.layers.1.pwconv1.bias'"),
    (lambda sd: sd.update({"convnext.encoder.stages.0.layers.0.extra": np.zeros(3, np.float32)}),
     "unexpected 1 tensor: 'convnext.encoder.stages.0.layers.0.extra'"),
    (lambda sd: sd.update({"convnext.encoder.stages.1.layers.0.dwconv.weight": np.zeros((20, 1, 5, 5), np.float32)}),
     "'convnext.encoder.stages.1.layers.0.dwconv.weight' has shape (20, 1, 5, 5), the config needs (20, 1, 7, 7)"),
    (lambda sd: sd.update({"classifier.bias": np.zeros(10, np.int32)}), "not floating point"),
])
def test_bad_tensors_are_refused_naming_the_key(hf_copy, mutation, message):
    sd = tensors(hf_copy / "model.safetensors")
    mutation(sd)
    save_file(sd, str(hf_copy / "model.safetensors"))
    with pytest.raises(cnp.WeightsError, match="model.safetensors") as info:
        cnp.from_pretrained(hf_copy)
    assert message in str(info.value)


def test_config_that_disagrees_with_the_tensors(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    config["depths"] = [2, 1, 2, 1]
    (hf_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(cnp.WeightsError, match=r"depths is \[2, 1, 2, 1\], but the tensors .* have \[2, 1, 3, 1\]"):
        cnp.from_pretrained(hf_copy)


def test_config_with_other_model_types(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    for model_type, message in [("convnextv2", "ConvNeXt V2"), ("vit", "not a ConvNeXt")]:
        (hf_copy / "config.json").write_text(json.dumps(dict(config, model_type=model_type)))
        with pytest.raises(cnp.WeightsError, match=message):
            cnp.from_pretrained(hf_copy)


def test_malformed_config_json(hf_copy):
    (hf_copy / "config.json").write_text("{not json")
    with pytest.raises(cnp.WeightsError, match="config.json: cannot read config"):
        cnp.from_pretrained(hf_copy)


def test_timm_config_with_the_wrong_class_count(tmp_path):
    shutil.copytree(FIXTURES / "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    (tmp_path / "timm" / "config.json").write_text(json.dumps(dict(config, num_classes=1000)))
    with pytest.raises(cnp.WeightsError, match="num_classes is 1000, but the head .* has 10"):
        cnp.from_pretrained(tmp_path / "timm")


def test_timm_architecture_name_is_checked_against_the_tensors(tmp_path):
    shutil.copytree(FIXTURES / "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    (tmp_path / "timm" / "config.json").write_text(json.dumps(dict(config, architecture="convnext_tiny")))
    with pytest.raises(cnp.WeightsError, match=r"'convnext_tiny' has depths \[3, 3, 9, 3\]"):
        cnp.from_pretrained(tmp_path / "timm")


def test_not_a_convnext(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({"vit.embeddings.cls_token": np.zeros((1, 1, 8), np.float32)}, str(path))
    with pytest.raises(cnp.WeightsError, match="not a ConvNeXt checkpoint .* vit.embeddings.cls_token"):
        cnp.from_pretrained(path)


def test_convnext_v2_is_named(tmp_path):
    path = tmp_path / "v2.safetensors"
    save_file({"convnextv2.embeddings.patch_embeddings.weight": np.zeros((8, 3, 4, 4), np.float32)}, str(path))
    with pytest.raises(cnp.WeightsError, match="ConvNeXt V2"):
        cnp.from_pretrained(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(cnp.WeightsError, match="no weights found"):
        cnp.from_pretrained(tmp_path)
    with pytest.raises(cnp.WeightsError, match="neither an existing local path"):
        cnp.from_pretrained(tmp_path / "nothing-here")


def test_missing_shard(tmp_path):
    shutil.copytree(FIXTURES / "hf-sharded", tmp_path / "m")
    (tmp_path / "m" / "model-00003-of-00011.safetensors").unlink()
    with pytest.raises(cnp.WeightsError, match="shard 'model-00003-of-00011.safetensors' is missing"):
        cnp.from_pretrained(tmp_path / "m")


def test_all_layouts_hold_the_same_model_as_their_source():
    """The FB .pth and .safetensors fixtures were written from one state dict."""
    a = cnp.from_pretrained(FIXTURES / "fb-pth" / "checkpoint.pth")
    b = cnp.from_pretrained(FIXTURES / "fb-safetensors" / "checkpoint.safetensors")
    for name, value in weights.to_hf_tensors(a.params, a.config).items():
        assert_array_equal(value, weights.to_hf_tensors(b.params, b.config)[name])


def test_wrappers_and_module_prefix_are_unwrapped(tmp_path):
    sd = read_state_dict(FIXTURES / "fb-safetensors" / "checkpoint.safetensors")
    inner = {"module." + k: v for k, v in sd.items()}
    assert weights.unwrap({"state_dict_ema": inner, "state_dict": {}}, "x").keys() == sd.keys()
    assert weights.unwrap({"model": sd}, "x") is sd


def test_save_pretrained_round_trips(tmp_path):
    model = cnp.from_pretrained(FIXTURES / "timm-conv-mlp")
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    again = cnp.from_pretrained(tmp_path / "saved")
    assert again.config.layer_norm_eps == model.config.layer_norm_eps == 1e-6
    x = random_pixels((1, 3, 64, 64))
    assert_array_equal(again(x).logits, model(x).logits)


def test_written_files_get_the_umask_mode_and_a_failed_write_keeps_the_old_file(tmp_path):
    """Every file convnext_np writes goes through files.atomic_write: the mode of any new file of
    the user (not mkstemp's 0600), and a writer that fails leaves the old file and no temporary."""
    model = cnp.from_pretrained(HF, backend="numpy")
    old = os.umask(0o027)
    try:
        model.save_pretrained(tmp_path / "saved")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "saved").iterdir()}
    assert modes == dict.fromkeys(["config.json", "model.safetensors", "preprocessor_config.json"], 0o640)
    target = tmp_path / "saved" / "config.json"
    before = target.read_bytes()

    def broken(path):
        Path(path).write_text("half a config")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path / "saved")) == sorted(modes)


# --- the safetensors reader -------------------------------------------------------------------

def test_safetensors_reader_memory_maps_and_widens_bf16():
    f = SafetensorsFile(FIXTURES / "hf-bf16" / "model.safetensors")
    name = "classifier.weight"
    assert f.dtype(name) == "BF16" and f.tensor(name).dtype == np.float32
    g = SafetensorsFile(HF / "model.safetensors")
    assert isinstance(g.tensor(name).base, np.memmap) or isinstance(g.tensor(name), np.memmap)


def write_raw(path, header: dict, data: bytes, declared_len=None):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data)
    return path


@pytest.mark.parametrize("header, data, declared, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside the data"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12 bytes"),
    ({"a": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
    ({}, b"", 10**9, "does not fit"),
])
def test_safetensors_reader_refuses_lying_headers(tmp_path, header, data, declared, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data, declared)
    with pytest.raises(cnp.WeightsError, match=message):
        SafetensorsFile(path)


def test_truncated_and_empty_safetensors(tmp_path):
    data = (HF / "model.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(cnp.WeightsError, match="truncated"):
        cnp.from_pretrained(tmp_path / "t.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(cnp.WeightsError, match="not a safetensors file"):
        cnp.from_pretrained(tmp_path / "e.safetensors")


# --- the torch pickle reader ------------------------------------------------------------------

def test_pickle_reader_needs_no_torch_and_maps_storages():
    sd = torch_pickle.load(FIXTURES / "hf-bin" / "pytorch_model.bin")
    ref = tensors(HF / "model.safetensors")
    assert sd.keys() == ref.keys()
    for k, v in sd.items():
        assert_array_equal(v, ref[k])


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_that_calls_os_system_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    import pickle
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(cnp.WeightsError, match=r"refusing to unpickle global (posix|os)\.system"):
        cnp.from_pretrained(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_legacy_and_non_zip_pickles(tmp_path):
    import pickle
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(cnp.WeightsError, match="legacy"):
        cnp.from_pretrained(tmp_path / "legacy.pth")
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(cnp.WeightsError, match="not a torch checkpoint"):
        cnp.from_pretrained(tmp_path / "text.bin")


def test_unknown_file_type(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"\x89HDF")
    with pytest.raises(cnp.WeightsError, match="unknown weights format"):
        cnp.from_pretrained(tmp_path / "w.h5")


# --- ConvNeXt V2 ------------------------------------------------------------------------------

V2_HF = FIXTURES / "v2-hf-safetensors"


def test_v2_hf_legacy_grn_names_load_as_transformers_renames_them(tmp_path):
    """transformers renames a GRN's legacy ``gamma``/``beta`` to ``weight``/``bias`` on load."""
    sd = tensors(V2_HF / "model.safetensors")
    legacy = {k.replace("grn.weight", "grn.gamma").replace("grn.bias", "grn.beta"): v for k, v in sd.items()}
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    a, b = cnp.from_pretrained(V2_HF), cnp.from_pretrained(tmp_path / "legacy.safetensors")
    x = random_pixels((1, 3, 64, 64))
    assert_array_equal(a(x).logits, b(x).logits)


@pytest.mark.parametrize("mutation, message", [
    (lambda sd: sd.pop("convnextv2.encoder.stages.2.layers.1.grn.bias"),
     "missing 1 tensor: 'convnext.encoder.stages.2.layers.1.grn.bias'"),
    (lambda sd: sd.update({"convnextv2.encoder.stages.0.layers.0.layer_scale_parameter": np.ones(12, np.float32)}),
     "unexpected 1 tensor: 'convnext.encoder.stages.0.layers.0.layer_scale_parameter'"),
    (lambda sd: sd.update({"convnextv2.encoder.stages.0.layers.0.grn.gamma": np.ones((1, 1, 1, 48), np.float32)}),
     "two tensors are 'convnext.encoder.stages.0.layers.0.grn.weight'"),
    (lambda sd: sd.update({"convnextv2.encoder.stages.1.layers.0.grn.weight": np.ones((1, 1, 1, 79), np.float32)}),
     "grn.weight' has shape (1, 1, 1, 79), the config needs (1, 1, 1, 80)"),
    (lambda sd: sd.pop("convnextv2.layernorm.weight"), "missing 1 tensor: 'convnext.layernorm.weight'"),
    (lambda sd: sd.update({"convnext.embeddings.layernorm.weight": np.ones(12, np.float32)}),
     "both 'convnext.' and 'convnextv2.'"),
])
def test_bad_v2_tensors_are_refused_naming_the_key(tmp_path, mutation, message):
    """Strict as for V1; a classifier's final norm is never made up (only a headless FCMAE's)."""
    sd = tensors(V2_HF / "model.safetensors")
    mutation(sd)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(cnp.WeightsError, match="bad.safetensors") as info:
        cnp.from_pretrained(path)
    assert message in str(info.value)


def test_v2_prefix_without_grn_is_refused(tmp_path):
    sd = tensors(HF / "model.safetensors")
    path = tmp_path / "fake.safetensors"
    save_file({k.replace("convnext.", "convnextv2.", 1): v for k, v in sd.items()}, str(path))
    with pytest.raises(cnp.WeightsError, match="fake.safetensors: tensors under 'convnextv2.' .* no GRN"):
        cnp.from_pretrained(path)


def test_v1_config_with_v2_tensors_and_timm_v2_name_with_v1_tensors(tmp_path):
    shutil.copytree(V2_HF, tmp_path / "v2")
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    (tmp_path / "v2" / "config.json").write_text(json.dumps(dict(config, model_type="convnext")))
    with pytest.raises(cnp.WeightsError, match="model_type 'convnext' is ConvNeXt V1 .* are ConvNeXt V2"):
        cnp.from_pretrained(tmp_path / "v2")
    shutil.copytree(FIXTURES / "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    (tmp_path / "timm" / "config.json").write_text(json.dumps(dict(config, architecture="convnextv2_micro")))
    with pytest.raises(cnp.WeightsError, match="'convnextv2_micro' is ConvNeXt V2 .* are ConvNeXt V1"):
        cnp.from_pretrained(tmp_path / "timm")


def test_fcmae_encoder_gets_timms_unit_final_norm_and_saves_as_convnextv2model(tmp_path):
    model = cnp.from_pretrained(FIXTURES / "v2-timm-fcmae")
    assert model.config.num_labels == 0 and model.config.model_type == "convnextv2"
    assert_array_equal(model.params["head"]["norm_w"], 1)
    assert_array_equal(model.params["head"]["norm_b"], 0)
    model.save_pretrained(tmp_path / "saved")
    saved = tensors(tmp_path / "saved" / "model.safetensors")
    assert "convnextv2.layernorm.weight" in saved and not any(k.startswith("convnext.") for k in saved)
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("convnextv2", ["ConvNextV2Model"])
    assert "layer_scale_init_value" not in config
    again = cnp.from_pretrained(tmp_path / "saved")
    x = random_pixels((1, 3, 64, 64))
    assert_array_equal(again(x).pooled, model(x).pooled)
