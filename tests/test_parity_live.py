"""Live parity with transformers, run where the ``reference`` extra is installed (CI does).

Reference models are built in transformers with realistic random weights, saved by
transformers itself in each of its layouts, and loaded by convnext_np.
"""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

import convnext_np as cnp
from conftest import FIXTURES, MAX_DIFFS
from convnext_np.testing import HIDDEN_RTOL, LOGITS_ATOL, POOLED_ATOL, random_pixels, realistic_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_reference(variant=None, num_labels=1000, seed=7, v2=False, **kwargs):
    """transformers ConvNextForImageClassification (ConvNextV2ForImageClassification with
    ``v2``), realistic random weights."""
    if variant:
        c = cnp.VARIANTS[variant]
        kwargs.update(depths=list(c.depths), hidden_sizes=list(c.hidden_sizes))
    if v2:
        config = transformers.ConvNextV2Config(num_labels=num_labels, **kwargs)
        model = transformers.ConvNextV2ForImageClassification(config).eval()
    else:
        config = transformers.ConvNextConfig(num_labels=num_labels, **kwargs)
        model = transformers.ConvNextForImageClassification(config).eval()
    sd = realistic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return model


@torch.no_grad()
def compare(ours, theirs, x, label, hidden=True):
    ref = theirs(torch.from_numpy(x), output_hidden_states=hidden)
    out = ours(x, output_hidden_states=hidden)
    assert_allclose(out.logits, ref.logits.numpy(), rtol=0, atol=LOGITS_ATOL, strict=True)
    assert (out.logits.argmax(1) == ref.logits.numpy().argmax(1)).all()
    pooled = theirs.base_model(torch.from_numpy(x)).pooler_output.numpy()
    assert_allclose(out.pooled, pooled, rtol=0, atol=POOLED_ATOL, strict=True)
    if hidden:
        for got, want in zip(out.hidden_states, ref.hidden_states, strict=True):
            want = want.numpy()
            assert_allclose(got, want, rtol=0, atol=HIDDEN_RTOL * np.abs(want).max(), strict=True)
    MAX_DIFFS[label] = max(MAX_DIFFS.get(label, 0), float(np.abs(out.logits - ref.logits.numpy()).max()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = hf_reference("tiny")
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    return model, path


def test_tiny_safetensors_matches_transformers(tiny):
    theirs, path = tiny
    ours = cnp.from_pretrained(path, backend="numpy")
    assert ours.config.layer_norm_eps == theirs.config.layer_norm_eps == 1e-12
    compare(ours, theirs, random_pixels((2, 3, 224, 224), 3), "live tiny hf-safetensors")
    compare(ours, theirs, random_pixels((1, 3, 192, 256), 4), "live tiny hf-safetensors")


def test_tiny_bin_matches_transformers(tiny, tmp_path):
    theirs, path = tiny
    (tmp_path / "config.json").write_bytes((path / "config.json").read_bytes())
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    ours = cnp.from_pretrained(tmp_path)
    compare(ours, theirs, random_pixels((1, 3, 224, 224), 5), "live tiny hf-bin", hidden=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints(dtype, tmp_path):
    theirs = hf_reference(depths=[2, 2, 3, 2], hidden_sizes=[16, 24, 40, 56], num_labels=12)
    theirs.to(getattr(torch, dtype)).save_pretrained(tmp_path)
    ours = cnp.from_pretrained(tmp_path)
    compare(ours, theirs.float(), random_pixels((2, 3, 96, 96), 6), f"live micro hf-{dtype}")


def test_save_pretrained_loads_in_transformers(tmp_path):
    ours = cnp.from_pretrained(FIXTURES / "timm-conv-mlp")
    ours.save_pretrained(tmp_path)
    theirs = transformers.ConvNextForImageClassification.from_pretrained(tmp_path).eval()
    assert theirs.config.layer_norm_eps == 1e-6
    compare(ours, theirs, random_pixels((2, 3, 64, 80), 7), "live save_pretrained round trip")


@torch.no_grad()
def test_headless_convnext_model(tmp_path):
    full = hf_reference(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32], num_labels=3)
    full.convnext.save_pretrained(tmp_path)  # a ConvNextModel: keys without "convnext."
    ours = cnp.from_pretrained(tmp_path)
    assert ours.config.num_labels == 0
    x = random_pixels((1, 3, 64, 64), 8)
    out = ours(x)
    assert out.logits is None
    ref = full.convnext(torch.from_numpy(x))
    assert_allclose(out.pooled, ref.pooler_output.numpy(), rtol=0, atol=POOLED_ATOL, strict=True)
    assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), rtol=0,
                    atol=HIDDEN_RTOL * float(ref.last_hidden_state.abs().max()), strict=True)


def test_config_json_is_read_as_transformers_reads_it(tiny):
    theirs, path = tiny
    ours = cnp.ConvNextConfig.from_json_file(path / "config.json")
    for field in ("depths", "hidden_sizes", "layer_norm_eps", "num_labels", "image_size"):
        assert getattr(ours, field) == getattr(theirs.config, field), field
    assert ours.id2label == theirs.config.id2label


# --- ConvNeXt V2 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_v2_tiny_matches_transformers(backend, tmp_path):
    """ConvNextV2ForImageClassification (GRN drawn wide), saved by transformers itself."""
    theirs = hf_reference("tiny", seed=11, v2=True)
    theirs.save_pretrained(tmp_path)
    ours = cnp.from_pretrained(tmp_path, backend=backend)
    assert ours.config.model_type == "convnextv2" and ours.config.variant() == "tiny"
    label = "live v2 tiny hf-safetensors" + ("" if backend == "numpy" else f" [{backend}]")
    compare(ours, theirs, random_pixels((2, 3, 224, 224), 12), label)
    compare(ours, theirs, random_pixels((1, 3, 192, 256), 13), label)


@pytest.mark.parametrize("layout, cls", [("v2-timm-conv-mlp", "ConvNextV2ForImageClassification"),
                                         ("v2-fb-pt/checkpoint.pt", "ConvNextV2ForImageClassification"),
                                         ("v2-timm-fcmae", "ConvNextV2Model")])
@torch.no_grad()
def test_v2_save_pretrained_loads_in_transformers(layout, cls, tmp_path):
    """timm and facebookresearch V2 weights written by convnext_np as transformers' V2 classes."""
    ours = cnp.from_pretrained(FIXTURES / layout)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "convnextv2" and config["architectures"] == [cls]
    theirs = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    x = random_pixels((2, 3, 64, 80), 14)
    if cls == "ConvNextV2Model":
        ref, out = theirs(torch.from_numpy(x)), ours(x)
        assert out.logits is None
        assert_allclose(out.pooled, ref.pooler_output.numpy(), rtol=0, atol=POOLED_ATOL, strict=True)
        MAX_DIFFS["live v2 save_pretrained fcmae (pooled)"] = float(np.abs(out.pooled - ref.pooler_output.numpy()).max())
    else:
        compare(ours, theirs, x, f"live v2 save_pretrained {layout.split('/')[0]}")
