"""Build the parity fixtures: reference ConvNeXts with realistic random weights, written in each
official layout, and the outputs that transformers and timm compute for them.

Run with the ``reference`` extra plus timm (timm needs torchvision; see ``weights/README.md``):

    python weights/make_fixtures.py            # rewrites weights/fixtures and weights/reference
    python weights/make_fixtures.py --only v2  # rewrites only the ConvNeXt V2 ones (v2-*)

- ``weights/fixtures/<layout>/``: a micro ConvNeXt (small enough to commit) in every layout the
  loader reads, each with ``reference.safetensors`` (inputs and the reference outputs) and
  ``reference.json`` (what made it).
- ``weights/reference/<variant>-<layout>.{json,safetensors}``: full-size variants. Only the
  outputs are committed; ``reference.json`` lists every tensor name and shape, so the tests
  rebuild the same weights with :func:`convnext_np.testing.realistic_state_dict`.
- ConvNeXt V2 (GRN blocks, no layer scale): ``weights/fixtures/v2-<layout>/`` (transformers
  ``ConvNextV2ForImageClassification`` and headless ``ConvNextV2Model``, timm with Linear and
  1x1-conv MLP, timm's headless FCMAE encoder, facebookresearch ConvNeXt-V2 ``.pt``) and
  ``weights/reference/v2-<variant>-<layout>.*``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import timm
import torch
import transformers
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from timm.models.convnext import checkpoint_filter_fn

from convnext_np.testing import random_pixels, realistic_state_dict

ROOT = Path(__file__).parent
MICRO = {"depths": [2, 1, 3, 1], "dims": [12, 20, 36, 44], "num_classes": 10}
MICRO_INPUTS = [((2, 3, 64, 64), 0), ((1, 3, 64, 96), 1), ((1, 3, 70, 45), 2)]
FULL_INPUTS = [((2, 3, 224, 224), 0), ((1, 3, 160, 224), 1)]
SEED = 1234


def versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "timm": timm.__version__, "numpy": np.__version__}


def as_torch(sd: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def shapes_of(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def hf_v2_model(depths, dims, num_classes):
    """transformers ConvNeXt V2: ConvNextV2ForImageClassification, or ConvNextV2Model (headless)."""
    config = transformers.ConvNextV2Config(depths=depths, hidden_sizes=dims, num_labels=max(num_classes, 1))
    if num_classes == 0:
        return transformers.ConvNextV2Model(config).eval()
    return transformers.ConvNextV2ForImageClassification(config).eval()


def timm_v2_model(depths, dims, num_classes, conv_mlp=False):
    """timm's ConvNeXt V2 (as timm's convnextv2_* constructors build it)."""
    return TimmConvNeXt(depths=depths, dims=dims, num_classes=num_classes, conv_mlp=conv_mlp,
                        use_grn=True, ls_init_value=None).eval()


def fb_v2_names(timm_sd_shapes: dict) -> dict:
    """facebookresearch ConvNeXt-V2 names: those of V1, and GRN as ``grn.gamma``/``grn.beta`` of
    shape (1, 1, 1, 4C) (models/utils.py there); checked by timm's own converter."""
    out = {}
    for k, shape in fb_names(timm_sd_shapes).items():
        if ".mlp.grn." in k:
            k = k.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            shape = (1, 1, 1) + tuple(shape)
        out[k] = shape
    return out


def hf_model(depths, dims, num_classes):
    config = transformers.ConvNextConfig(depths=depths, hidden_sizes=dims, num_labels=num_classes)
    return transformers.ConvNextForImageClassification(config).eval()


def timm_model(depths, dims, num_classes, conv_mlp=False):
    return TimmConvNeXt(depths=depths, dims=dims, num_classes=num_classes, conv_mlp=conv_mlp).eval()


def fb_names(timm_sd_shapes: dict, num_stages=4) -> dict:
    """facebookresearch names for a timm (non conv-MLP) model, checked by timm's own converter."""
    out = {}
    for k, shape in timm_sd_shapes.items():
        k2 = (k.replace("stem.", "downsample_layers.0.").replace("conv_dw", "dwconv")
              .replace("mlp.fc", "pwconv").replace("head.fc.", "head.").replace("head.norm.", "norm."))
        parts = k2.split(".")
        if parts[0] == "stages" and parts[2] == "downsample":
            k2 = ".".join(["downsample_layers", parts[1]] + parts[3:])
        elif parts[0] == "stages" and parts[2] == "blocks":
            k2 = ".".join(["stages", parts[1]] + parts[3:])
        out[k2] = shape
    return out


@torch.no_grad()
def run_hf(model, x, hidden=True) -> dict:
    out = model(torch.from_numpy(x), output_hidden_states=hidden)
    pooled = model.convnext(torch.from_numpy(x)).pooler_output
    result = {"logits": out.logits.numpy(), "pooled": pooled.numpy()}
    if hidden:
        result.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
    return result


@torch.no_grad()
def run_timm(model, x, hidden=True) -> dict:
    """Logits (when there is a head), pooled (forward_head pre_logits) and the five hidden states."""
    t = torch.from_numpy(x)
    features = model.forward_features(t)
    result = {"pooled": model.forward_head(features, pre_logits=True).numpy()}
    if model.num_classes:  # with num_classes=0, timm's "logits" are the pooled features
        result["logits"] = model.forward_head(features).numpy()
    if hidden:
        h = model.stem(t)
        result["hidden_states.0"] = h.numpy()
        for i, stage in enumerate(model.stages):
            h = stage(h)
            result[f"hidden_states.{i + 1}"] = h.numpy()
    return result


@torch.no_grad()
def run_hf_v2(model, x, hidden=True) -> dict:
    """Outputs of a transformers ConvNeXt V2, with or without its classification head."""
    base = getattr(model, "convnextv2", model)
    out = base(torch.from_numpy(x), output_hidden_states=hidden)
    result = {"pooled": out.pooler_output.numpy()}
    if base is not model:
        result["logits"] = model(torch.from_numpy(x)).logits.numpy()
    if hidden:
        result.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
    return result



def record(path: Path, run, inputs, store_inputs: bool, meta: dict) -> None:
    tensors = {}
    for i, (shape, seed) in enumerate(inputs):
        x = random_pixels(shape, seed)
        if store_inputs:
            tensors[f"input{i}.pixel_values"] = x
        for name, value in run(x).items():
            tensors[f"input{i}.{name}"] = np.ascontiguousarray(value, dtype=np.float32)
    meta = dict(meta, inputs=[{"shape": list(s), "seed": seed,
                               "sum": float(random_pixels(s, seed).astype(np.float64).sum())}
                              for s, seed in inputs], versions=versions())
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def round_to(sd: dict, dtype) -> dict:
    return {k: torch.from_numpy(v).to(dtype).float().numpy() for k, v in sd.items()}


def micro_fixtures(out: Path) -> None:
    d, c, k = MICRO["depths"], MICRO["dims"], MICRO["num_classes"]

    # Hugging Face layouts: one set of weights, written five ways.
    model = hf_model(d, c, k)
    sd = realistic_state_dict(shapes_of(model), SEED)
    for layout, dtype in [("hf-safetensors", None), ("hf-bin", None), ("hf-sharded", None),
                          ("hf-f16", torch.float16), ("hf-bf16", torch.bfloat16)]:
        target = out / layout
        target.mkdir(parents=True)
        weights = sd if dtype is None else round_to(sd, dtype)
        model.load_state_dict(as_torch(weights), strict=True)
        model.config.to_json_file(str(target / "config.json"))
        if layout == "hf-bin":
            torch.save(as_torch(sd), target / "pytorch_model.bin")
        elif layout == "hf-sharded":
            model.save_pretrained(target, max_shard_size="40KB")
        elif dtype is not None:
            save_torch_file({k: v.to(dtype) for k, v in as_torch(sd).items()},
                            str(target / "model.safetensors"), metadata={"format": "pt"})
        else:
            save_file(sd, str(target / "model.safetensors"), metadata={"format": "pt"})
        record(target / "reference", lambda x: run_hf(model, x), MICRO_INPUTS, True,
               {"reference": "transformers ConvNextForImageClassification", "layout": layout,
                "seed": SEED})

    # timm layouts: Linear MLP and conv-MLP (the atto..nano storage).
    for layout, conv_mlp in [("timm", False), ("timm-conv-mlp", True)]:
        target = out / layout
        target.mkdir(parents=True)
        model = timm_model(d, c, k, conv_mlp)
        sd = realistic_state_dict(shapes_of(model), SEED + 1)
        model.load_state_dict(as_torch(sd), strict=True)
        save_file(sd, str(target / "model.safetensors"))
        (target / "config.json").write_text(json.dumps({
            "architecture": "convnext_micro", "num_classes": k, "num_features": c[-1],
            "pretrained_cfg": {"input_size": [3, 64, 64], "crop_pct": 0.875, "crop_mode": "center",
                               "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "num_classes": k}}, indent=1) + "\n")
        record(target / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
               {"reference": f"timm ConvNeXt(conv_mlp={conv_mlp})", "layout": layout, "seed": SEED + 1})

    # facebookresearch layout, loaded into timm by timm's own converter (checkpoint_filter_fn).
    model = timm_model(d, c, k)
    fb = realistic_state_dict(fb_names(shapes_of(model)), SEED + 2)
    model.load_state_dict(checkpoint_filter_fn({"model": as_torch(fb)}, model), strict=True)
    for layout in ("fb-pth", "fb-safetensors"):
        target = out / layout
        target.mkdir(parents=True)
        if layout == "fb-pth":
            torch.save({"model": as_torch(fb)}, target / "checkpoint.pth")
        else:
            save_file(fb, str(target / "checkpoint.safetensors"))
        record(target / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
               {"reference": "timm ConvNeXt via checkpoint_filter_fn", "layout": layout, "seed": SEED + 2})


def timm_config(architecture: str, num_classes: int, num_features: int) -> str:
    return json.dumps({
        "architecture": architecture, "num_classes": num_classes, "num_features": num_features,
        "pretrained_cfg": {"input_size": [3, 64, 64], "crop_pct": 0.875, "crop_mode": "center",
                           "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "num_classes": num_classes}}, indent=1) + "\n"


def micro_v2_fixtures(out: Path) -> None:
    """The micro ConvNeXt V2 in each layout; every reference computed by transformers or timm."""
    d, c, k = MICRO["depths"], MICRO["dims"], MICRO["num_classes"]

    # transformers, saved by transformers itself: classification and headless.
    for layout, classes in [("v2-hf-safetensors", k), ("v2-hf-headless", 0)]:
        target = out / layout
        model = hf_v2_model(d, c, classes)
        sd = realistic_state_dict(shapes_of(model), SEED + 10)
        model.load_state_dict(as_torch(sd), strict=True)
        model.save_pretrained(target)
        record(target / "reference", lambda x: run_hf_v2(model, x), MICRO_INPUTS, True,
               {"reference": f"transformers {type(model).__name__}", "layout": layout, "seed": SEED + 10})

    # timm: Linear MLP, 1x1-conv MLP (atto..nano), and a headless FCMAE encoder. timm's FCMAE
    # checkpoints have neither head nor final norm; timm loads them non-strictly into a model
    # with num_classes=0 whose norm keeps its initial values (timm convnext.py, _create_convnext).
    for layout, conv_mlp, classes in [("v2-timm", False, k), ("v2-timm-conv-mlp", True, k),
                                      ("v2-timm-fcmae", True, 0)]:
        target = out / layout
        target.mkdir(parents=True)
        model = timm_v2_model(d, c, classes, conv_mlp)
        sd = realistic_state_dict(shapes_of(model), SEED + 11)
        if classes == 0:
            sd = {name: v for name, v in sd.items() if not name.startswith("head.")}
            missing = model.load_state_dict(as_torch(sd), strict=False).missing_keys
            assert sorted(missing) == ["head.norm.bias", "head.norm.weight"], missing
        else:
            model.load_state_dict(as_torch(sd), strict=True)
        save_file(sd, str(target / "model.safetensors"))
        (target / "config.json").write_text(timm_config("convnextv2_micro", classes, c[-1]))
        record(target / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
               {"reference": f"timm ConvNeXt(use_grn=True, ls_init_value=None, conv_mlp={conv_mlp}, "
                             f"num_classes={classes})", "layout": layout, "seed": SEED + 11})

    # facebookresearch ConvNeXt-V2 .pt ({"model": sd}), loaded into timm by timm's converter.
    target = out / "v2-fb-pt"
    target.mkdir(parents=True)
    model = timm_v2_model(d, c, k)
    fb = realistic_state_dict(fb_v2_names(shapes_of(model)), SEED + 12)
    model.load_state_dict(checkpoint_filter_fn({"model": as_torch(fb)}, model), strict=True)
    torch.save({"model": as_torch(fb)}, target / "checkpoint.pt")
    record(target / "reference", lambda x: run_timm(model, x), MICRO_INPUTS, True,
           {"reference": "timm ConvNeXt V2 via checkpoint_filter_fn", "layout": "v2-fb-pt", "seed": SEED + 12})


def full_size_v2_references(out: Path) -> None:
    """ConvNeXt V2 tiny (transformers, timm, facebookresearch) and atto (timm, 1x1-conv MLP)."""
    out.mkdir(parents=True, exist_ok=True)
    cases = [("tiny", "hf", hf_v2_model([3, 3, 9, 3], [96, 192, 384, 768], 1000)),
             ("tiny", "timm", timm.create_model("convnextv2_tiny", pretrained=False).eval()),
             ("tiny", "fb", timm.create_model("convnextv2_tiny", pretrained=False).eval()),
             ("atto", "timm", timm.create_model("convnextv2_atto", pretrained=False).eval())]
    for variant, layout, m in cases:
        shapes = fb_v2_names(shapes_of(m)) if layout == "fb" else shapes_of(m)
        sd = realistic_state_dict(shapes, SEED)
        if layout == "fb":
            m.load_state_dict(checkpoint_filter_fn({"model": as_torch(sd)}, m), strict=True)
        else:
            m.load_state_dict(as_torch(sd), strict=True)
        run = (lambda x, m=m: run_hf_v2(m, x, hidden=False)) if layout == "hf" else \
            (lambda x, m=m: run_timm(m, x, hidden=False))
        record(out / f"v2-{variant}-{layout}", run, FULL_INPUTS, False, {
            "reference": type(m).__module__ + "." + type(m).__name__, "layout": layout,
            "variant": variant, "model_type": "convnextv2", "seed": SEED,
            "tensors": {k: list(s) for k, s in shapes.items()},
            "weights_abs_sum": float(sum(np.abs(v.astype(np.float64)).sum() for v in sd.values())),
        })


def full_size_references(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)  # it holds the V2 references too
    for variant in ("atto", "tiny"):
        model = timm.create_model(f"convnext_{variant}", pretrained=False).eval()
        layouts = {"timm": model}
        if variant == "tiny":
            layouts["hf"] = hf_model([3, 3, 9, 3], [96, 192, 384, 768], 1000)
            layouts["fb"] = timm.create_model("convnext_tiny", pretrained=False).eval()
        for layout, m in layouts.items():
            if layout == "fb":
                shapes = fb_names(shapes_of(m))
                sd = realistic_state_dict(shapes, SEED)
                m.load_state_dict(checkpoint_filter_fn({"model": as_torch(sd)}, m), strict=True)
            else:
                shapes = shapes_of(m)
                sd = realistic_state_dict(shapes, SEED)
                m.load_state_dict(as_torch(sd), strict=True)
            run = (lambda x, m=m: run_hf(m, x, hidden=False)) if layout == "hf" else \
                (lambda x, m=m: run_timm(m, x, hidden=False))
            record(out / f"{variant}-{layout}", run, FULL_INPUTS, False, {
                "reference": type(m).__module__ + "." + type(m).__name__, "layout": layout,
                "variant": variant, "seed": SEED,
                "tensors": {k: list(s) for k, s in shapes.items()},
                "weights_abs_sum": float(sum(np.abs(v.astype(np.float64)).sum() for v in sd.values())),
            })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["v1", "v2"], help="rewrite only ConvNeXt V1's or V2's fixtures")
    only = parser.parse_args().only
    torch.manual_seed(0)
    if only != "v2":
        for sub in ("fixtures", "reference"):
            for path in (ROOT / sub).glob("*"):
                if not path.name.startswith("v2-"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        micro_fixtures(ROOT / "fixtures")
        full_size_references(ROOT / "reference")
    if only != "v1":
        for path in [*(ROOT / "fixtures").glob("v2-*"), *(ROOT / "reference").glob("v2-*")]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        micro_v2_fixtures(ROOT / "fixtures")
        full_size_v2_references(ROOT / "reference")


if __name__ == "__main__":
    main()
