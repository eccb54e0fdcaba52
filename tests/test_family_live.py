"""Live parity with transformers for the Backbone classes and DINOv3 ConvNeXt, run where the
``reference`` extra is installed (CI does). Models are built in transformers with realistic random
weights, saved by transformers, and loaded by convnext_np.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import convnext_np as cnp
from conftest import MAX_DIFFS, ROOT
from convnext_np.testing import HIDDEN_RTOL, POOLED_ATOL, random_pixels, realistic_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = {"depths": [2, 1, 2, 1], "hidden_sizes": [16, 24, 32, 40]}


def realistic(model, seed):
    sd = realistic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return model.eval()


def close(got, want, label):
    want = want.numpy()
    assert_allclose(got, want, rtol=0, atol=HIDDEN_RTOL * np.abs(want).max(), strict=True)
    MAX_DIFFS[label] = max(MAX_DIFFS.get(label, 0.0), float(np.abs(got - want).max()))


@torch.no_grad()
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("family", ["ConvNext", "ConvNextV2"])
def test_convnext_backbone_checkpoint(family, backend, tmp_path):
    config = getattr(transformers, f"{family}Config")(**SIZES, out_features=["stage1", "stage3", "stage4"])
    theirs = realistic(getattr(transformers, f"{family}Backbone")(config), 11)
    theirs.save_pretrained(tmp_path)
    ours = cnp.from_pretrained(tmp_path, backend=backend)
    assert ours.out_features == ["stage1", "stage3", "stage4"]
    assert ours.config.model_type == {"ConvNext": "convnext", "ConvNextV2": "convnextv2"}[family]
    for shape, seed in [((2, 3, 64, 64), 1), ((1, 3, 70, 45), 2)]:
        x = random_pixels(shape, seed)
        want = theirs(torch.from_numpy(x)).feature_maps
        got = ours(x).feature_maps
        for g, w in zip(got, want, strict=True):
            close(g, w, f"live {family}Backbone feature_maps [{backend}]")


@torch.no_grad()
def test_classifier_weights_in_a_backbone_get_fresh_norms(tmp_path):
    """A classification checkpoint asked for maps: transformers' ConvNextBackbone.from_pretrained
    initialises the norms it lacks (weight 1, bias 0); so do we."""
    classifier = realistic(transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(**SIZES, num_labels=5)), 12)
    classifier.save_pretrained(tmp_path)
    theirs = transformers.ConvNextBackbone.from_pretrained(tmp_path, out_features=["stem", "stage2"]).eval()
    ours = cnp.from_pretrained(tmp_path, out_features=["stem", "stage2"])
    x = random_pixels((1, 3, 96, 64), 3)
    out = ours(x)
    for g, w in zip(out.feature_maps, theirs(torch.from_numpy(x)).feature_maps, strict=True):
        close(g, w, "live ConvNextBackbone from a classifier")
    assert out.logits.shape == (1, 5)  # the model is still the classifier


@torch.no_grad()
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dinov3_convnext_model(backend, tmp_path):
    theirs = realistic(transformers.DINOv3ConvNextModel(transformers.DINOv3ConvNextConfig(**SIZES)), 13)
    theirs.save_pretrained(tmp_path)
    ours = cnp.from_pretrained(tmp_path, backend=backend)
    assert ours.config.model_type == "dinov3_convnext"
    assert ours.config.to_dict()["architectures"] == ["DINOv3ConvNextModel"]
    for shape, seed in [((2, 3, 64, 64), 4), ((1, 3, 96, 70), 5)]:
        x = random_pixels(shape, seed)
        ref = theirs(torch.from_numpy(x), output_hidden_states=True)
        out = ours(x, output_hidden_states=True)
        close(out.sequence, ref.last_hidden_state, f"live DINOv3ConvNextModel sequence [{backend}]")
        assert_allclose(out.pooled, ref.pooler_output.numpy(), rtol=0, atol=POOLED_ATOL, strict=True)
        for g, w in zip(out.hidden_states[1:], ref.hidden_states[1:], strict=True):  # theirs[0]: the input
            close(g, w, f"live DINOv3ConvNextModel hidden states [{backend}]")


@torch.no_grad()
def test_dinov3_convnext_backbone(tmp_path):
    config = transformers.DINOv3ConvNextConfig(**SIZES, out_features=["stem", "stage2", "stage4"])
    theirs = realistic(transformers.DINOv3ConvNextBackbone(config), 14)
    theirs.save_pretrained(tmp_path)
    ours = cnp.from_pretrained(tmp_path)
    assert ours.out_features == ["stem", "stage2", "stage4"] and ours.config.final_norm is False
    x = random_pixels((1, 3, 64, 64), 6)
    out = ours(x)
    assert out.pooled is None and out.sequence is None
    for g, w in zip(out.feature_maps, theirs(torch.from_numpy(x)).feature_maps, strict=True):
        close(g, w, "live DINOv3ConvNextBackbone feature_maps")


@torch.no_grad()
@pytest.mark.parametrize("case, cls", [("hf-dinov3", "DINOv3ConvNextModel"),
                                       ("fb-dinov3/checkpoint.pth", "DINOv3ConvNextModel"),
                                       ("hf-backbone", "ConvNextBackbone")])
def test_convert_writes_the_transformers_class(case, cls, tmp_path):
    """save_pretrained (``convnext-np convert``) writes what the matching transformers class loads."""
    ours = cnp.from_pretrained(ROOT / "weights" / "family" / case)
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    x = random_pixels((1, 3, 64, 96), 7)
    ref, out = theirs(torch.from_numpy(x)), ours(x)
    if cls == "ConvNextBackbone":
        for g, w in zip(out.feature_maps, ref.feature_maps, strict=True):
            close(g, w, "live convert ConvNextBackbone")
    else:
        close(out.sequence, ref.last_hidden_state, "live convert DINOv3ConvNextModel")


def test_timm_only_structures_are_not_converted(tmp_path):
    ours = cnp.from_pretrained(ROOT / "weights" / "family" / "timm-ols-tiered")
    with pytest.raises(cnp.WeightsError, match="stem_type='overlap_tiered' has no transformers equivalent"):
        ours.save_pretrained(tmp_path)
