"""Build the family fixtures: micro models of every structure beyond the paper's ConvNeXt, saved by
timm and transformers with realistic random weights, and the outputs those libraries compute.

Run in the timm environment of ``weights/README.md`` (torch, torchvision, timm, transformers),
with the repository on ``PYTHONPATH``:

    PYTHONPATH=. python weights/make_family_fixtures.py   # rewrites weights/family and
                                                          # convnext_np/data/timm_tags.json

- ``weights/family/<case>/``: the checkpoint as the library saves it (a timm directory, a
  transformers directory, or an original DINOv3 ``.pth``), ``reference.safetensors`` (inputs and
  the reference outputs) and ``reference.json`` (what made them). Cases: timm's overlapping
  stems (``_ols``: tiered, plain, with GELU), SimpleNorm (``zepto_rms``), head-norm-first
  (``_hnf``), the pre-logits MLP head (``large_mlp``), DINOv3 ConvNeXt in transformers, timm and
  original naming, transformers' ConvNextBackbone with its per-map LayerNorms, and timm's three
  unit-test models (``test_convnext*``: GELU-tanh, SiLU, 5x5 and 3x3 kernels, norm_eps 1e-5) at
  their own sizes, with a 10-class head.
- ``convnext_np/data/timm_tags.json``: every pretrained ConvNeXt tag of this timm, with the
  structure its architecture builds, its head size and its pretrained_cfg essentials.

Helpers shared with the V1 fixtures come from ``make_fixtures.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import timm
import torch
import transformers
from safetensors.numpy import save_file
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from timm.models.convnext import checkpoint_filter_fn

from make_fixtures import MICRO, MICRO_INPUTS, as_torch, record, run_timm, shapes_of
from convnext_np.testing import realistic_state_dict

ROOT = Path(__file__).parent
OUT = ROOT / "family"
TAGS_FILE = ROOT.parent / "convnext_np" / "data" / "timm_tags.json"
SEED = 4321
D, C, K = MICRO["depths"], MICRO["dims"], MICRO["num_classes"]

# case -> timm ConvNeXt keyword arguments (timm/models/convnext.py names)
TIMM_CASES = {
    "timm-ols-tiered": dict(stem_type="overlap_tiered", conv_mlp=True),
    "timm-ols": dict(stem_type="overlap"),
    "timm-ols-act-simplenorm": dict(stem_type="overlap_act", norm_layer="simplenorm", conv_mlp=True),
    "timm-simplenorm": dict(norm_layer="simplenorm", conv_mlp=True),
    "timm-hnf": dict(head_norm_first=True, conv_mlp=True),
    "timm-mlp-head": dict(head_hidden_size=24),
}
TIMM_CFG = {"input_size": [3, 64, 64], "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# transformers' DINOv3 converter (models/dinov3_convnext/convert_dinov3_convnext_to_hf.py): its
# ORIGINAL_TO_CONVERTED_KEY_MAPPING, applied in order; it then skips norms.3.
DINO_CONVERTER = [(r"dwconv", r"depthwise_conv"), (r"pwconv", r"pointwise_conv"), (r"norm", r"layer_norm"),
                  (r"stages.(\d+).(\d+)", r"stages.\1.layers.\2"),
                  (r"downsample_layers.(\d+).(\d+)", r"stages.\1.downsample_layers.\2")]


@torch.no_grad()
def run_dinov3(model, x) -> dict:
    """transformers' DINOv3ConvNextModel: the token sequence, the pooler, the stage outputs."""
    out = model(torch.from_numpy(x), output_hidden_states=True)
    result = {"sequence": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy()}
    for i, h in enumerate(out.hidden_states[1:]):  # [0] is the input itself
        result[f"hidden_states.{i + 1}"] = h.numpy()
    return result


@torch.no_grad()
def run_backbone(model, x) -> dict:
    out = model(torch.from_numpy(x), output_hidden_states=True)
    result = {f"feature_maps.{i}": f.numpy() for i, f in enumerate(out.feature_maps)}
    result.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
    return result


def timm_dir(target: Path, model, sd, architecture, pretrained_cfg) -> None:
    target.mkdir(parents=True)
    save_file(sd, str(target / "model.safetensors"))
    (target / "config.json").write_text(json.dumps({
        "architecture": architecture, "num_classes": model.num_classes, "num_features": model.num_features,
        "pretrained_cfg": dict(pretrained_cfg, num_classes=model.num_classes)}, indent=1) + "\n")


def timm_fixtures() -> None:
    for i, (case, kwargs) in enumerate(TIMM_CASES.items()):
        model = TimmConvNeXt(depths=D, dims=C, num_classes=K, **kwargs).eval()
        sd = realistic_state_dict(shapes_of(model), SEED + i)
        model.load_state_dict(as_torch(sd), strict=True)
        timm_dir(OUT / case, model, sd, "convnext_micro", TIMM_CFG)
        record(OUT / case / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
               {"reference": f"timm ConvNeXt({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
                "layout": "timm", "seed": SEED + i})


# case -> timm architecture, built by timm.create_model as registered (only the head made smaller)
TIMM_TEST_CASES = {"timm-test-convnext": "test_convnext", "timm-test-convnext2": "test_convnext2",
                   "timm-test-convnext3": "test_convnext3"}


def timm_test_fixtures() -> None:
    for i, (case, architecture) in enumerate(TIMM_TEST_CASES.items()):
        model = timm.create_model(architecture, pretrained=False, num_classes=K).eval()
        sd = realistic_state_dict(shapes_of(model), SEED + 40 + i)
        model.load_state_dict(as_torch(sd), strict=True)
        cfg = {k: model.pretrained_cfg[k] for k in TIMM_CFG}
        timm_dir(OUT / case, model, sd, architecture, cfg)
        record(OUT / case / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
               {"reference": f"timm.create_model({architecture!r}, num_classes={K})",
                "layout": "timm", "seed": SEED + 40 + i})


def dinov3_original_names(hf_shapes: dict) -> dict:
    """The original DINOv3 ConvNeXt names (facebookresearch naming + ``norms.3``) for the keys of a
    transformers DINOv3ConvNextModel; checked by running transformers' converter mapping back."""
    out = {}
    for key, shape in hf_shapes.items():
        k = key.removeprefix("model.")
        k = re.sub(r"stages\.(\d+)\.downsample_layers\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.layers\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("depthwise_conv", "dwconv").replace("pointwise_conv", "pwconv").replace("layer_norm", "norm")
        out[k] = shape
    out["norms.3.weight"], out["norms.3.bias"] = out["norm.weight"], out["norm.bias"]
    return out


def converted(original: dict) -> dict:
    """transformers' converter: the mapping in order, norms.3 skipped, then the ``model.`` prefix
    that transformers 5 adds when loading (conversion_mapping ``dinov3_convnext``)."""
    out = {}
    for key, value in original.items():
        if key.startswith("norms.3."):
            continue
        new = key
        for pattern, repl in DINO_CONVERTER:
            new = re.sub(pattern, repl, new)
        out[re.sub(r"^stages", "model.stages", new)] = value
    return out


def dinov3_fixtures() -> None:
    config = transformers.DINOv3ConvNextConfig(depths=D, hidden_sizes=C)
    model = transformers.DINOv3ConvNextModel(config).eval()
    hf_shapes = shapes_of(model)
    original = realistic_state_dict(dinov3_original_names(hf_shapes), SEED + 20)
    original["norms.3.weight"], original["norms.3.bias"] = original["norm.weight"], original["norm.bias"]
    sd = converted(original)
    assert set(sd) == set(hf_shapes)
    model.load_state_dict(as_torch(sd), strict=True)
    meta = {"reference": "transformers DINOv3ConvNextModel", "seed": SEED + 20}

    target = OUT / "hf-dinov3"  # transformers' own save_pretrained
    model.save_pretrained(target)
    record(target / "reference", lambda x: run_dinov3(model, x), MICRO_INPUTS, True,
           dict(meta, layout="hf-dinov3"))

    target = OUT / "fb-dinov3"  # the original checkpoint layout, with the norms.3 duplicate
    target.mkdir(parents=True)
    torch.save(as_torch(original), target / "checkpoint.pth")
    record(target / "reference", lambda x: run_dinov3(model, x), MICRO_INPUTS, True,
           dict(meta, layout="fb-dinov3", reference="transformers DINOv3ConvNextModel via its converter"))

    # timm's convnext_*.dinov3_lvd1689m: the original file through timm's checkpoint_filter_fn.
    timm_model = TimmConvNeXt(depths=D, dims=C, num_classes=0).eval()
    timm_sd = checkpoint_filter_fn(as_torch(original), timm_model)
    timm_model.load_state_dict(timm_sd, strict=True)
    cfg = {**TIMM_CFG, "crop_pct": 1.0, "tag": "dinov3_lvd1689m", "license": "dinov3-license"}
    timm_dir(OUT / "timm-dinov3", timm_model, {k: v.numpy() for k, v in timm_sd.items()},
             "convnext_micro", cfg)
    record(OUT / "timm-dinov3" / "reference",
           lambda x: {**run_timm(timm_model, x), "sequence": run_dinov3(model, x)["sequence"]},
           MICRO_INPUTS, True, dict(meta, layout="timm-dinov3",
                                    reference="timm ConvNeXt(num_classes=0) via checkpoint_filter_fn; "
                                              "sequence by transformers DINOv3ConvNextModel"))


def backbone_fixture() -> None:
    config = transformers.ConvNextConfig(depths=D, hidden_sizes=C, out_features=["stem", "stage2", "stage4"])
    model = transformers.ConvNextBackbone(config).eval()
    sd = realistic_state_dict(shapes_of(model), SEED + 30)
    model.load_state_dict(as_torch(sd), strict=True)
    target = OUT / "hf-backbone"
    model.save_pretrained(target)
    record(target / "reference", lambda x: run_backbone(model, x), MICRO_INPUTS, True,
           {"reference": "transformers ConvNextBackbone", "layout": "hf-backbone", "seed": SEED + 30,
            "out_features": config.out_features})


STRUCTURE_ARGS = ("stem_type", "norm_layer", "head_norm_first", "head_hidden_size", "use_grn", "ls_init_value",
                  "kernel_sizes", "act_layer", "norm_eps", "conv_mlp")


def tag_table() -> None:
    """Every pretrained ConvNeXt tag: how timm builds its architecture (a meta-device model, so no
    weights are made) and the pretrained_cfg fields that preprocessing and labels need."""
    rows = {}
    for tag in timm.list_pretrained("*convnext*"):
        arch = tag.split(".")[0]
        model = timm.create_model(tag, pretrained=False, device="meta")
        cfg = model.pretrained_cfg
        stem = model.stem
        stem_type = "patch" if len(stem) == 2 else (
            "overlap_act" if len(stem) == 4 else
            "overlap" if stem[0].out_channels == stem[1].out_channels else "overlap_tiered")
        norm = type(stem[-1]).__name__
        block = model.stages[0].blocks[0]
        rows[tag] = {
            "architecture": arch,
            "depths": [len(s.blocks) for s in model.stages],
            "dims": [s.blocks[0].conv_dw.out_channels for s in model.stages],
            "stem_type": stem_type,
            "norm": norm,
            "norm_eps": float(stem[-1].eps),
            "conv_mlp": bool(block.use_conv_mlp),
            "grn": hasattr(block.mlp, "grn"),
            "layer_scale": block.gamma is not None,
            "kernel_sizes": [s.blocks[0].conv_dw.kernel_size[0] for s in model.stages],
            "act": type(block.mlp.act).__name__,
            "head_norm_first": not isinstance(model.norm_pre, torch.nn.Identity),
            "head_hidden_size": getattr(model.head, "hidden_size", None),
            "num_classes": model.num_classes,
            "pretrained_cfg": {k: cfg.get(k) for k in ("input_size", "test_input_size", "crop_pct",
                                                       "test_crop_pct", "crop_mode", "interpolation",
                                                       "mean", "std", "license") if cfg.get(k) is not None},
        }
    TAGS_FILE.write_text(json.dumps({"timm": timm.__version__, "tags": rows}, indent=1) + "\n")


def main() -> None:
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    timm_fixtures()
    timm_test_fixtures()
    dinov3_fixtures()
    backbone_fixture()
    tag_table()


if __name__ == "__main__":
    main()
