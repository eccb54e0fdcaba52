"""Every pretrained ConvNeXt tag of the installed timm: its structure, built by timm at micro size
with realistic random weights, loads from a bare weights file and matches timm. timm's unit-test
models (``test_convnext*``) are built at their own (tiny) size and load from a timm directory,
whose ``architecture`` says their activation, which no tensor shows. A new tag whose structure we
do not load fails here. Skipped where timm is not installed (it needs torchvision;
``weights/README.md`` says how to run it).
"""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from safetensors.numpy import save_file

import convnext_np as cnp
from conftest import MAX_DIFFS, ROOT
from convnext_np.config import MODEL_TYPES
from convnext_np.testing import LOGITS_ATOL, POOLED_ATOL, random_pixels, realistic_state_dict, timm_state_dict_shapes

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

MICRO = {"depths": (1, 1, 2, 1), "dims": (16, 24, 32, 40)}
OWN_SIZE = ("test_convnext",)  # timm's unit-test models: GELU-tanh or SiLU, 5x5 and 3x3 kernels
TABLE = json.loads((ROOT / "convnext_np" / "data" / "timm_tags.json").read_text())["tags"]


def cases():
    """Each distinct (architecture, head size) among timm's pretrained ConvNeXt tags."""
    seen = {}
    for tag in timm.list_pretrained("*convnext*"):
        arch = tag.split(".")[0]
        seen.setdefault((arch, timm.models.get_pretrained_cfg(tag).num_classes), tag)
    return sorted(seen.items())


def test_the_committed_tag_table_lists_every_tag():
    """``convnext_np/data/timm_tags.json`` (made by weights/make_family_fixtures.py) is current."""
    assert set(timm.list_pretrained("*convnext*")) <= set(TABLE)


@torch.no_grad()
@pytest.mark.parametrize("case", cases(), ids=lambda c: f"{c[0][0]}-{c[0][1]}")
def test_tag_structure_loads_and_matches_timm(case, tmp_path):
    (arch, num_classes), tag = case
    if arch.startswith("convnextv2") and "convnextv2" not in MODEL_TYPES:
        pytest.skip("ConvNeXt V2 (GRN) is not in this build")
    row = TABLE[tag]
    own_size = arch.startswith(OWN_SIZE)
    sizes = {"depths": row["depths"], "dims": row["dims"]} if own_size else MICRO
    extra = {"head_hidden_size": 24} if row["head_hidden_size"] else {}
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                              **({} if own_size else MICRO), **extra).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not arch.startswith("convnextv2"):  # our description of timm's names, checked by timm
        assert shapes == timm_state_dict_shapes(
            sizes["depths"], sizes["dims"], num_classes, stem_type=row["stem_type"],
            norm_layer={"LayerNorm2d": "layernorm", "SimpleNorm2d": "simplenorm"}[row["norm"]],
            head_norm_first=row["head_norm_first"], conv_mlp=row["conv_mlp"],
            kernel_sizes=row["kernel_sizes"], **extra)
    sd = realistic_state_dict(shapes, seed=len(tag))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    save_file(sd, str(tmp_path / "model.safetensors"))
    if own_size:  # a timm directory: its architecture sets the activation and the eps
        (tmp_path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": num_classes}))
        ours = cnp.from_pretrained(tmp_path, backend="numpy")
        assert ours.config.hidden_act == {"GELUTanh": "gelu_pytorch_tanh", "SiLU": "silu"}[row["act"]]
        assert (ours.config.kernel_sizes, ours.config.norm_eps) == (row["kernel_sizes"], row["norm_eps"])
    else:
        ours = cnp.from_pretrained(tmp_path / "model.safetensors", backend="numpy")
        # A bare file's norm eps is read off the widths (xxlarge's 1e-5); at micro widths, set it.
        ours.config.norm_eps = ours.config.layer_norm_eps = row["norm_eps"]
    x = random_pixels((2, 3, 64, 64), 0)
    out = ours(x)
    t = torch.from_numpy(x)
    features = model.forward_features(t)
    assert_allclose(out.pooled, model.forward_head(features, pre_logits=True).numpy(), rtol=0,
                    atol=POOLED_ATOL, strict=True)
    if num_classes:
        want = model.forward_head(features).numpy()
        assert_allclose(out.logits, want, rtol=0, atol=LOGITS_ATOL, strict=True)
        assert (out.logits.argmax(1) == want.argmax(1)).all()
        MAX_DIFFS[f"timm tag {arch} ({num_classes})"] = float(np.abs(out.logits - want).max())
    else:
        assert out.logits is None


@torch.no_grad()
@pytest.mark.parametrize("act_layer, hidden_act", [("silu", "silu"), ("gelu_tanh", "gelu_pytorch_tanh"),
                                                  ("gelu", "gelu")])
def test_activation_reaches_the_stem_but_not_the_mlp_head(act_layer, hidden_act, tmp_path):
    """No tag has both, but timm builds them: its act_layer is the overlap_act stem's activation
    too, while the MLP head's stays GELU (NormMlpClassifierHead(act_layer='gelu')). With GELU, the
    Numba backend's fused blocks run kernel sizes other than 7."""
    model = timm.models.convnext.ConvNeXt(depths=MICRO["depths"], dims=MICRO["dims"], num_classes=5,
                                          stem_type="overlap_act", head_hidden_size=24, act_layer=act_layer,
                                          kernel_sizes=(3, 5, 7, 9)).eval()
    sd = realistic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=3)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    save_file(sd, str(tmp_path / "model.safetensors"))
    for backend in ("numpy", "numba"):
        ours = cnp.from_pretrained(tmp_path / "model.safetensors", backend=backend)
        assert ours.config.kernel_sizes == [3, 5, 7, 9] and ours.config.stem_type == "overlap_act"
        ours.config.hidden_act = hidden_act  # no tensor shows it (a bare file)
        x = random_pixels((2, 3, 64, 64), 1)
        want = model(torch.from_numpy(x)).numpy()
        got = ours(x).logits
        assert_allclose(got, want, rtol=0, atol=LOGITS_ATOL, strict=True)
        MAX_DIFFS[f"timm ConvNeXt(act_layer={act_layer!r}, overlap_act, MLP head) [{backend}]"] = float(
            np.abs(got - want).max())
