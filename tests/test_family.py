"""The wider ConvNeXt family: timm's structural variants, DINOv3 ConvNeXt, backbones.

``weights/make_family_fixtures.py`` wrote each fixture with timm or transformers: realistic random
weights saved as that library saves them, and the outputs it computes on three inputs (a batch
of 2, a non-square input, one whose sides are not multiples of 32).
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from numpy.testing import assert_allclose
from safetensors.numpy import save_file

import convnext_np as cnp
from conftest import IMAGE_DIR, MAX_DIFFS, ROOT
from convnext_np import backbone, family, weights
from convnext_np.config import MODEL_TYPES, STRUCTURE_DEFAULTS, VARIANTS
from convnext_np.safetensors_file import SafetensorsFile
from convnext_np.testing import (HIDDEN_RTOL, LOGITS_ATOL, POOLED_ATOL, random_pixels,
                                 realistic_state_dict, timm_state_dict_shapes)

FAMILY = ROOT / "weights" / "family"
SOURCES = {"fb-dinov3": "fb-dinov3/checkpoint.pth"}  # else the directory itself
CASES = sorted(p.name for p in FAMILY.iterdir() if p.is_dir())
STRUCTURE = {  # what each fixture must load as
    "timm-ols-tiered": {"stem_type": "overlap_tiered"},
    "timm-ols": {"stem_type": "overlap"},
    "timm-ols-act-simplenorm": {"stem_type": "overlap_act", "norm_layer": "simplenorm"},
    "timm-simplenorm": {"norm_layer": "simplenorm"},
    "timm-hnf": {"head_norm_first": True},
    "timm-mlp-head": {"head_hidden_size": 24},
    "hf-dinov3": {"model_type": "dinov3_convnext"},
    "fb-dinov3": {"model_type": "dinov3_convnext"},
    "timm-dinov3": {"model_type": "dinov3_convnext"},
    "hf-backbone": {"final_norm": False},
    # timm's unit-test models; the activation and the eps come from config.json's architecture
    "timm-test-convnext": {"hidden_act": "gelu_pytorch_tanh", "norm_eps": 1e-5, "layer_norm_eps": 1e-5},
    "timm-test-convnext2": {"hidden_act": "gelu_pytorch_tanh", "norm_eps": 1e-5, "layer_norm_eps": 1e-5},
    "timm-test-convnext3": {"hidden_act": "silu", "kernel_sizes": [7, 5, 5, 3], "norm_eps": 1e-5,
                            "layer_norm_eps": 1e-5},
}
# What a bare file cannot show: no tensor holds the activation or the eps.
FROM_ARCHITECTURE = ("hidden_act", "norm_eps", "layer_norm_eps")


def test_every_fixture_has_an_expected_structure():
    assert sorted(STRUCTURE) == CASES


def check_outputs(out, ref, i, label):
    """Every output the reference recorded for input ``i``; the summary gets the max |diff| of the
    main one (logits, else pooled, else the feature maps)."""
    diffs = {}
    for key in ref.keys():
        if not key.startswith(f"input{i}.") or key.endswith("pixel_values"):
            continue
        name = key.split(".", 1)[1]
        want = ref.tensor(key)
        if name.startswith(("hidden_states.", "feature_maps.")):
            kind, j = name.split(".")
            got = getattr(out, kind)[int(j)]
            assert_allclose(got, want, rtol=0, atol=HIDDEN_RTOL * np.abs(want).max(), strict=True)
        else:
            got = getattr(out, name)
            atol = LOGITS_ATOL if name == "logits" else POOLED_ATOL
            assert_allclose(got, want, rtol=0, atol=atol, strict=True)
        if name == "logits":
            assert (got.argmax(1) == want.argmax(1)).all()
        kind = name.split(".")[0]
        diffs[kind] = max(diffs.get(kind, 0.0), float(np.abs(got - want).max()))
    main = next(diffs[k] for k in ("logits", "pooled", "feature_maps") if k in diffs)
    MAX_DIFFS[label] = max(MAX_DIFFS.get(label, 0.0), main)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", CASES)
def test_family_fixture_matches_reference(case, backend):
    model = cnp.from_pretrained(FAMILY / SOURCES.get(case, case), backend=backend)
    for field, value in STRUCTURE[case].items():
        assert getattr(model.config, field) == value, field
    ref = SafetensorsFile(FAMILY / case / "reference.safetensors")
    meta = json.loads((FAMILY / case / "reference.json").read_text())
    for i, spec in enumerate(meta["inputs"]):
        x = ref.tensor(f"input{i}.pixel_values")
        assert x.shape == tuple(spec["shape"])
        out = model(x, output_hidden_states=True)
        check_outputs(out, ref, i, f"family {case}" + ("" if backend == "numpy" else f" [{backend}]"))


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("timm-") and c != "timm-dinov3"
                                  and not c.startswith("timm-test-")])
def test_bare_timm_file_infers_the_structure(case):
    """Without config.json, the stem, norm and head kind come from the tensors alone."""
    model = cnp.from_pretrained(FAMILY / case / "model.safetensors")
    for field, value in STRUCTURE[case].items():
        assert getattr(model.config, field) == value, field
    ref = SafetensorsFile(FAMILY / case / "reference.safetensors")
    out = model(ref.tensor("input0.pixel_values"))
    assert_allclose(out.logits, ref.tensor("input0.logits"), rtol=0, atol=LOGITS_ATOL, strict=True)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("timm-test-")])
def test_bare_file_of_a_timm_test_model_cannot_show_its_activation(case):
    """A bare file of timm's test models gives the kernel sizes but not the activation or the
    eps: it loads as an exact-GELU ConvNeXt with eps 1e-6, which is another model. The directory
    (config.json's ``architecture``) is what loads it right.

    GELU and its tanh approximation differ by at most 5e-4, so the logits of the two differ by
    little more than LOGITS_ATOL here: the directory's model must be much closer than that."""
    bare = cnp.from_pretrained(FAMILY / case / "model.safetensors")
    assert bare.config.kernel_sizes == STRUCTURE[case].get("kernel_sizes", [7, 7, 7, 7])
    assert (bare.config.hidden_act, bare.config.norm_eps) == ("gelu", 1e-6)
    right = cnp.from_pretrained(FAMILY / case)
    ref = SafetensorsFile(FAMILY / case / "reference.safetensors")
    x, want = ref.tensor("input0.pixel_values"), ref.tensor("input0.logits")
    assert np.abs(right(x).logits - want).max() < 2e-5 < 1e-4 < np.abs(bare(x).logits - want).max()


def test_info_names_the_activation_and_kernel_sizes(capsys):
    """``convnext-np info`` says what differs from the paper; the depthwise MACs follow the kernels."""
    from convnext_np.cli import main
    from convnext_np.summary import stage_rows

    assert main(["info", str(FAMILY / "timm-test-convnext3")]) == 0
    assert "structure: kernel_sizes [7, 5, 5, 3], hidden_act silu" in capsys.readouterr().out
    assert main(["info", str(FAMILY / "timm-test-convnext")]) == 0
    assert "structure: hidden_act gelu_pytorch_tanh" in capsys.readouterr().out
    config = cnp.from_pretrained(FAMILY / "timm-test-convnext3").config
    sevens = dataclasses.replace(config, kernel_sizes=[7, 7, 7, 7])
    stage4, stage4_sevens = stage_rows(config)[4], stage_rows(sevens)[4]  # one 3x3 block, 128 ch, 7x7 map
    assert stage4_sevens["macs"] - stage4["macs"] == 7 * 7 * 128 * (49 - 9)
    assert stage4_sevens["params"] - stage4["params"] == 128 * (49 - 9)


def test_a_timm_directory_with_the_wrong_activation_is_another_model(tmp_path):
    """test_convnext2's tensors under test_convnext2 match timm; under an architecture name with
    the other activation but the same tensors (test_convnext3 has other kernels, so it is
    refused), they do not."""
    shutil.copytree(FAMILY / "timm-test-convnext2", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, architecture="test_convnext3")))
    with pytest.raises(cnp.WeightsError, match=r"kernel_sizes \[7, 5, 5, 3\] \(the tensors have \[7, 7, 7, 7\]\)"):
        cnp.from_pretrained(tmp_path / "m")


def test_dinov3_outputs_and_refusals():
    model = cnp.from_pretrained(FAMILY / "hf-dinov3")
    x = random_pixels((2, 3, 64, 96), 1)
    out = model(x)
    assert out.logits is None and model.config.num_labels == 0
    assert out.sequence.shape == (2, 1 + 2 * 3, model.config.hidden_sizes[-1])
    assert_allclose(out.sequence[:, 0], out.pooled, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no classification head"):
        cnp.classify(np.zeros((64, 64, 3), np.uint8), model=model)
    # Only DINOv3 has the sequence output.
    assert cnp.from_pretrained(FAMILY / "timm-hnf")(x).sequence is None


def test_backbone_checkpoint_returns_its_own_maps(tmp_path):
    model = cnp.from_pretrained(FAMILY / "hf-backbone")
    assert model.out_features == ["stem", "stage2", "stage4"]
    out = model(random_pixels((1, 3, 64, 64), 2))
    assert out.pooled is None and out.logits is None
    assert [m.shape for m in out.feature_maps] == [(1, 12, 16, 16), (1, 20, 8, 8), (1, 44, 2, 2)]
    # Asked for other stages: stage3's norm is not in the checkpoint, so it starts at 1 / 0.
    other = cnp.from_pretrained(FAMILY / "hf-backbone", out_indices=(2, 3))
    assert other.out_features == ["stage2", "stage3"]
    maps = other(random_pixels((1, 3, 64, 64), 2)).feature_maps
    assert_allclose(maps[0], out.feature_maps[1], rtol=0, atol=0)
    assert maps[1].shape == (1, 36, 4, 4)
    assert_allclose(maps[1].mean(axis=1), 0, atol=1e-5)  # a LayerNorm at weight 1, bias 0


def test_feature_maps_of_a_classifier_are_normalised_hidden_states():
    model = cnp.from_pretrained(ROOT / "weights" / "fixtures" / "timm", out_features=["stage1", "stage3"])
    out = model(random_pixels((1, 3, 64, 64), 3), output_hidden_states=True)
    for got, j in zip(out.feature_maps, (1, 3)):
        h = out.hidden_states[j]
        mean = h.mean(axis=1, keepdims=True)
        want = (h - mean) / np.sqrt(((h - mean) ** 2).mean(axis=1, keepdims=True) + 1e-6)
        assert_allclose(got, want, rtol=0, atol=1e-5)
    assert out.logits is not None  # the head still runs
    assert cnp.from_pretrained(ROOT / "weights" / "fixtures" / "timm")(
        random_pixels((1, 3, 64, 64), 3)).feature_maps is None


def test_dinov3_backbone_maps_have_no_norms():
    """transformers' DINOv3ConvNextBackbone: its "stem" map is the input, the others are the raw
    stage outputs."""
    model = cnp.from_pretrained(FAMILY / "hf-dinov3", out_features=["stem", "stage4"])
    x = random_pixels((1, 3, 64, 64), 4)
    out = model(x, output_hidden_states=True)
    assert_allclose(out.feature_maps[0], x, rtol=0, atol=0)
    assert_allclose(out.feature_maps[1], out.hidden_states[4], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"out_features": ["stage5"]}, "is not a stage"),
    ({"out_features": "stage1"}, "list of stage names"),
    ({"out_indices": (5,)}, "not a stage index"),
    ({"out_indices": (3, 1)}, "stage order"),
    ({"out_features": ["stage1"], "out_indices": (2,)}, "different stages"),
])
def test_bad_out_features_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        backbone.resolve_out_features(**kwargs)


def test_negative_out_indices_count_from_the_end():
    assert backbone.resolve_out_features(out_indices=(-1,)) == ["stage4"]
    assert backbone.resolve_out_features() is None


def test_original_dinov3_file_keeps_norms3_out_of_the_model():
    model = cnp.from_pretrained(FAMILY / "fb-dinov3" / "checkpoint.pth")
    names = [name for _, name, _ in weights.param_table(model.config)]
    assert not any("norms" in n for n in names)


def test_timm_architecture_name_must_match_the_structure(tmp_path):
    """zepto's sizes, but LayerNorm (with bias) where convnext_zepto_rms has SimpleNorm."""
    zepto = VARIANTS["zepto"]
    save_file(realistic_state_dict(timm_state_dict_shapes(zepto.depths, zepto.hidden_sizes, 10, conv_mlp=True)),
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "convnext_zepto_rms", "num_classes": 10}))
    with pytest.raises(cnp.WeightsError, match="norm_layer 'simplenorm' \\(the tensors have 'layernorm'\\)"):
        cnp.from_pretrained(tmp_path)


@pytest.mark.parametrize("num_classes, first", [(11821, "benthos"), (21841, None), (1000, "tench, Tinca tinca")])
def test_imagenet_label_sets_by_head_size(num_classes, first, tmp_path):
    shapes = timm_state_dict_shapes([1, 1, 1, 1], [8, 8, 16, 16], num_classes)
    save_file(realistic_state_dict(shapes), str(tmp_path / "m.safetensors"))
    model = cnp.from_pretrained(tmp_path / "m.safetensors")
    assert model.config.num_labels == num_classes
    assert not model.config.id2label[0].startswith("LABEL_")
    if first:
        assert model.config.id2label[0] == first


# --- timm's list of pretrained ConvNeXt tags --------------------------------------------------
TAGS = json.loads((ROOT / "convnext_np" / "data" / "timm_tags.json").read_text())["tags"]
# timm's act_layer class names -> hidden_act
ACTIVATIONS = {"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh", "SiLU": "silu"}


def structure_of(row) -> dict:
    """The config fields a tag's row describes (the generated table uses timm's class names)."""
    return {"stem_type": row["stem_type"],
            "norm_layer": {"LayerNorm2d": "layernorm", "SimpleNorm2d": "simplenorm"}[row["norm"]],
            "head_norm_first": row["head_norm_first"], "head_hidden_size": row["head_hidden_size"],
            "kernel_sizes": row["kernel_sizes"], "hidden_act": ACTIVATIONS[row["act"]]}


def v2_supported() -> bool:
    return "convnextv2" in MODEL_TYPES


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_every_timm_tag_is_a_structure_we_load(tag, tmp_path):
    """Each tag's architecture, as the generated table records it, is one our loader builds: the
    name maps to that structure, and a micro model of it in timm's naming loads and runs."""
    row = TAGS[tag]
    if row["grn"] and not v2_supported():
        pytest.skip("ConvNeXt V2 (GRN) is not in this build")
    variant, structure = family.timm_structure(row["architecture"]) or (None, None)
    if not row["grn"]:
        assert structure is not None, f"{row['architecture']} is not in convnext_np.family"
        size = family.timm_variant(row["architecture"])
        assert (list(size.depths), list(size.hidden_sizes)) == (row["depths"], row["dims"])
        assert {k: structure[k] for k in structure_of(row)} == structure_of(row)
        assert size.norm_eps == row["norm_eps"]
    else:
        assert (row["act"], row["kernel_sizes"]) == ("GELU", [7, 7, 7, 7])
    # A micro model of the structure in timm's naming, as a bare file: everything but the
    # activation comes from the tensors (timm-test-convnext* checks the activation, by directory).
    micro = dict(structure_of(row), head_hidden_size=row["head_hidden_size"] and 24)
    act = micro.pop("hidden_act")
    shapes = timm_state_dict_shapes([1, 1, 2, 1], [16, 24, 32, 40], row["num_classes"], conv_mlp=row["conv_mlp"],
                                    **micro)
    save_file(realistic_state_dict(shapes), str(tmp_path / "model.safetensors"))
    model = cnp.from_pretrained(tmp_path / "model.safetensors", backend="numpy")
    for field, value in micro.items():
        assert getattr(model.config, field) == value, field
    assert model.config.hidden_act == "gelu"  # a bare file: the paper's, whatever the architecture's
    if act != "gelu":
        assert row["architecture"].startswith("test_convnext")
    out = model(random_pixels((1, 3, 64, 64), 0))
    assert out.pooled.shape == (1, micro["head_hidden_size"] or 40)
    assert (out.logits is None) == (row["num_classes"] == 0)


def test_the_tag_table_covers_timm_and_its_heads():
    assert len(TAGS) >= 98
    heads = {row["num_classes"] for row in TAGS.values()}
    assert {0, 1000, 11821, 21841, 640, 768, 1024} <= heads
    assert STRUCTURE_DEFAULTS["stem_type"] == "patch"


def test_checkpoint_rows_agree_with_timm():
    """Each timm row of the checkpoint table: input size, crop and head as timm's pretrained_cfg
    (the generated tag table) has them."""
    rows = [row for row in cnp.CHECKPOINTS if row.timm in TAGS and row.model_type != "convnextv2"]
    assert len(rows) >= 50
    for row in rows:
        tag = TAGS[row.timm]
        cfg = tag["pretrained_cfg"]
        assert row.image_size == cfg["input_size"][-1], row.timm
        assert row.crop_pct == (None if row.image_size >= 384 else cfg["crop_pct"]), row.timm
        assert row.num_labels == tag["num_classes"], row.timm
        assert family.timm_structure(tag["architecture"])[0] == row.variant, row.timm
    dinov3 = [row for row in cnp.CHECKPOINTS if row.model_type == "dinov3_convnext"]
    assert len(dinov3) == 4 and all(row.gated and row.num_labels == 0 for row in dinov3)


def test_dinov3_preprocessing(tmp_path):
    """The facebook/ repos' processor config (transformers' DINOv3 converter writes a 224x224
    bilinear resize, no crop) reads as a 224 warp; a DINOv3 file without one gets the same."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True, "resample": 2,
        "size": {"height": 224, "width": 224}, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}))
    proc = cnp.ImageProcessor.from_pretrained(tmp_path)
    assert (proc.size, proc.crop_pct, proc.resample) == (224, None, "bilinear")
    bare = cnp.from_pretrained(FAMILY / "fb-dinov3" / "checkpoint.pth").preprocessor
    assert (bare.size, bare.crop_pct, bare.resample) == (224, None, "bilinear")
    image = np.zeros((100, 300, 3), np.uint8)
    assert bare(image).shape == (1, 3, 224, 224)


def test_timm_test_time_size():
    cfg = TAGS["convnext_tiny.in12k_ft_in1k"]["pretrained_cfg"]
    train = cnp.ImageProcessor.from_timm_cfg(cfg)
    test = cnp.ImageProcessor.from_timm_cfg(cfg, test_time=True)
    assert (train.size, train.crop_pct) == (224, 0.95)
    assert (test.size, test.crop_pct) == (288, 1.0)
    clip = cnp.ImageProcessor.from_timm_cfg(TAGS["convnext_base.clip_laion2b_augreg_ft_in12k_in1k_384"]["pretrained_cfg"])
    assert (clip.size, clip.crop_mode) == (384, "squash")
    assert clip.image_mean == (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize("case", ["timm-ols-act-simplenorm", "timm-mlp-head", "hf-dinov3", "hf-backbone",
                                  "timm-test-convnext3"])
def test_golden_bundles_for_the_family(case, tmp_path):
    """A golden bundle of each member checks out against a re-run, in float32 and float64."""
    from convnext_np import golden

    photo = str(IMAGE_DIR / "chelsea.png")
    model = cnp.from_pretrained(FAMILY / case, backend="numpy")
    for float64 in (False, True):
        out_dir = tmp_path / str(float64)
        manifest = golden.write_bundle([photo], model, out_dir, float64=float64)
        assert ("pooled" in manifest["tensors"]) == model.config.final_norm
        report = golden.check_bundle(out_dir, model)
        assert report.ok, str(report)


def test_a_new_head_on_family_members():
    """fit_head's classifier on DINOv3 makes transformers' ConvNeXt classifier (pool, final norm,
    Linear), on an MLP head it takes the MLP's width; a Backbone has no pooled features to fit on."""
    from convnext_np.head import with_head

    x = random_pixels((1, 3, 64, 64), 9)
    dino = cnp.from_pretrained(FAMILY / "hf-dinov3")
    classifier = with_head(dino, np.eye(3, 44, dtype=np.float32), np.zeros(3, np.float32), ["a", "b", "c"])
    assert classifier.config.model_type == "convnext"
    assert classifier.config.to_dict()["architectures"] == ["ConvNextForImageClassification"]
    assert_allclose(classifier(x).logits, dino(x).pooled[:, :3], rtol=0, atol=1e-6)
    mlp = cnp.from_pretrained(FAMILY / "timm-mlp-head")
    assert with_head(mlp, np.ones((2, 24), np.float32), np.zeros(2, np.float32), ["a", "b"])(x).logits.shape == (1, 2)
    with pytest.raises(ValueError, match=r"Backbone checkpoint \(no final LayerNorm\) has no pooled features"):
        cnp.fit_head(cnp.from_pretrained(FAMILY / "hf-backbone"), [str(IMAGE_DIR / "chelsea.png")],
                     ["cat"])
