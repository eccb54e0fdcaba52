"""ConvNextConfig reads and writes Hugging Face config.json, keeping what it does not know."""

import json

import pytest

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np.checkpoints import CHECKPOINTS, find_checkpoint
from convnext_np.config import MODEL_TYPES, V2_VARIANTS


def test_hf_config_round_trips_with_unknown_keys(tmp_path):
    original = json.loads((FIXTURES / "hf-safetensors" / "config.json").read_text())
    original["some_future_field"] = {"nested": [1, 2]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original))
    config = cnp.ConvNextConfig.from_json_file(path)
    assert config.extra["some_future_field"] == {"nested": [1, 2]}
    assert config.num_labels == 10 and config.id2label[3] == "LABEL_3"
    config.to_json_file(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    for key, value in original.items():
        assert again[key] == value, key


def test_num_labels_without_id2label_follows_transformers():
    assert cnp.ConvNextConfig.from_dict({"num_labels": 7}).num_labels == 7
    assert cnp.ConvNextConfig.from_dict({}).num_labels == 2


@pytest.mark.parametrize("bad, message", [
    ({"depths": [3, 3, 9]}, "needs 4 stages"),
    ({"hidden_act": "gelu_new"}, "hidden_act must be one of 'gelu', 'gelu_pytorch_tanh', 'gelu_tanh', "
                                 "'silu' .*got 'gelu_new'"),
    ({"hidden_act": "relu"}, "hidden_act must be one of .*got 'relu'"),
    ({"hidden_act": ["gelu"]}, "hidden_act must be one of"),
    ({"kernel_sizes": [7, 5, 5]}, "kernel_sizes must be one odd positive int, or 4"),
    ({"kernel_sizes": 4}, r"kernel_sizes .*got \[4, 4, 4, 4\]"),
    ({"kernel_sizes": [7, 5, 0, 3]}, "kernel_sizes must be one odd positive"),
    ({"kernel_sizes": [7, 5, 5, "3"]}, "kernel_sizes must be a list of ints"),
    ({"kernel_sizes": True}, "kernel_sizes must be a list of ints"),
    ({"depths": [3, 0, 9, 3]}, "positive"),
    ({"patch_size": 2}, "patch_size=4"),
    ({"depths": "abc"}, "invalid ConvNeXt config"),
])
def test_invalid_configs(bad, message):
    with pytest.raises(cnp.WeightsError, match=message):
        cnp.ConvNextConfig.from_dict(bad)


@pytest.mark.parametrize("hidden_act, op", [("gelu", "gelu"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                            ("gelu_tanh", "gelu_tanh"), ("silu", "silu")])
def test_activations_and_kernel_sizes(hidden_act, op):
    """transformers' names (and timm's gelu_tanh) -> the op; kernel_sizes as timm takes them (one
    int or one per stage), written to config.json only when they are not the paper's 7."""
    from convnext_np.config import HIDDEN_ACTS

    c = cnp.ConvNextConfig.from_dict({"hidden_act": hidden_act, "kernel_sizes": 5})
    assert HIDDEN_ACTS[c.hidden_act] == op and c.kernel_sizes == [5, 5, 5, 5]
    d = c.to_dict()
    assert (d["hidden_act"], d["kernel_sizes"]) == (hidden_act, [5, 5, 5, 5])
    assert cnp.ConvNextConfig.from_dict(d).to_dict() == d
    assert "kernel_sizes" not in cnp.ConvNextConfig(kernel_sizes=[7, 7, 7, 7]).to_dict()


def test_variants_table():
    assert cnp.ConvNextConfig.from_variant("tiny").variant() == "tiny"
    assert cnp.ConvNextConfig.from_variant("xxlarge").norm_eps == 1e-5
    assert set(cnp.VARIANTS) == {"zepto", "atto", "femto", "pico", "nano", "tiny", "small", "base", "large",
                                 "xlarge", "xxlarge"}
    with pytest.raises(ValueError, match="unknown ConvNeXt variant"):
        cnp.ConvNextConfig.from_variant("huge")


def test_checkpoint_table_is_consistent():
    aliases = [c.alias for c in CHECKPOINTS]
    assert len(aliases) == len(set(aliases))
    for c in CHECKPOINTS:
        assert c.variant in (V2_VARIANTS if c.model_type == "convnextv2" else cnp.VARIANTS)
        assert c.model_type in MODEL_TYPES
        assert (c.license == "cc-by-nc-4.0") == (c.model_type == "convnextv2")  # V2 weights: non-commercial
        assert (c.crop_pct is None) == (c.image_size >= 384)
        for name in filter(None, (c.alias, c.hf_id, c.timm)):
            assert find_checkpoint(name) is c
    assert find_checkpoint("timm/convnext_tiny.fb_in1k").hf_id == "facebook/convnext-tiny-224"
    v2 = find_checkpoint("facebook/convnextv2-tiny-1k-224")
    assert (v2.timm, v2.top1, v2.model_type) == ("convnextv2_tiny.fcmae_ft_in1k", 83.0, "convnextv2")
    assert find_checkpoint("convnextv2_huge.fcmae_ft_in22k_in1k_512").image_size == 512


def test_v2_config():
    config = cnp.ConvNextConfig.from_variant("huge", model_type="convnextv2")
    assert config.variant() == "huge" and config.hidden_sizes == [352, 704, 1408, 2816]
    d = config.to_dict()
    assert d["model_type"] == "convnextv2" and d["architectures"] == ["ConvNextV2ForImageClassification"]
    assert "layer_scale_init_value" not in d  # not a field of transformers' ConvNextV2Config
    headless = cnp.ConvNextConfig.from_variant("tiny", num_labels=0, model_type="convnextv2")
    assert headless.to_dict()["architectures"] == ["ConvNextV2Model"]
    assert cnp.ConvNextConfig.from_dict(d).model_type == "convnextv2"
    with pytest.raises(cnp.WeightsError, match="model_type"):
        cnp.ConvNextConfig.from_dict(dict(d, model_type="resnet"))
    assert find_checkpoint("facebook/convnext-base-224-22k").num_labels == 21841
    assert find_checkpoint("nope") is None
