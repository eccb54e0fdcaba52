"""The published ConvNeXt checkpoints, one row each (from timm's ``default_cfgs``
in ``timm/models/convnext.py``, transformers' ``convert_convnext_to_pytorch.py`` and the
facebookresearch README).

``hf_id`` is the ``facebook/`` repo on the Hugging Face hub (None where Meta published none),
``timm`` the timm name (hub repo ``timm/<name>``), ``fb`` the original facebookresearch file
stem (``https://dl.fbaipublicfiles.com/convnext/<fb>.pth``). ``crop_pct`` None means the image
is warped to a square with no crop, as all ports do at 384 (transformers'
``ConvNextImageProcessor``, timm's eval transform). ``labels`` names the label set:
``imagenet-1k`` (1000 classes) or ``imagenet-22k`` (21841 classes).

The wider family (timm's ``pretrained_cfg`` and ``results/results-imagenet.csv``, whose top-1 at
the train size is ``top1``, %): timm's ImageNet-12k heads (``imagenet-12k``, 11821 classes,
timm's subset of fall11) and their ImageNet-1k fine-tunes; the LAION CLIP image towers, whose
head is an embedding projection (``clip-embedding``, ``head_size`` wide; they use OpenAI CLIP's
mean and std) and their fine-tunes; timm's ``_ols``, ``_hnf`` and ``zepto_rms`` models; and
DINOv3 ConvNeXt (``model_type="dinov3_convnext"``), headless (``labels="none"``), whose weights
are gated behind Meta's DINOv3 licence on the hub (``gated``): accept it on the repo's page and
give the hub client a token (``HF_TOKEN``). Its ``facebook/`` repo preprocesses with a 224x224
bilinear warp (its own ``preprocessor_config.json``); timm's copy with a crop_pct 1.0 centre crop.

ConvNeXt V2 rows (``model_type="convnextv2"``, Woo et al. 2023) come from the
facebookresearch/ConvNeXt-V2 README, with its published ImageNet-1k top-1 (``top1``, %); their
``fb`` is the file under ``https://dl.fbaipublicfiles.com/convnext/convnextv2/`` without
``.pt``. The V2 weights are licensed CC-BY-NC 4.0 (non-commercial; ``license``); ``license`` is
None where this table does not record one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    alias: str
    variant: str
    hf_id: str | None
    timm: str | None
    fb: str | None
    image_size: int
    crop_pct: float | None
    labels: str
    sha256: str | None = None  # of the safetensors file, where one has been pinned
    model_type: str = "convnext"  # "convnextv2" for ConvNeXt V2
    top1: float | None = None  # published ImageNet-1k top-1 accuracy, %
    license: str | None = None
    head_size: int | None = None  # a CLIP tower's embedding width (labels "clip-embedding")
    gated: bool = False  # the hub serves the weights only after the licence is accepted

    @property
    def num_labels(self) -> int:
        if self.head_size is not None:
            return self.head_size
        return LABEL_SET_SIZES[self.labels]


_1K, _22K = "imagenet-1k", "imagenet-22k"
_12K, _CLIP, _NONE = "imagenet-12k", "clip-embedding", "none"
LABEL_SET_SIZES = {_1K: 1000, _12K: 11821, _22K: 21841, _NONE: 0}


def _timm(tag, variant, size, crop_pct, labels, top1=None, **kwargs):
    """A row for a timm hub checkpoint; its alias is the timm name with dashes."""
    alias = tag.replace("_", "-").replace(".", "-")
    return Checkpoint(alias, variant, None, tag, None, size, crop_pct, labels, top1=top1,
                      license=kwargs.pop("license", "apache-2.0"), **kwargs)


def _dinov3(variant):
    return Checkpoint(f"dinov3-convnext-{variant}", variant, f"facebook/dinov3-convnext-{variant}-pretrain-lvd1689m",
                      f"convnext_{variant}.dinov3_lvd1689m", None, 224, 1.0, _NONE,
                      model_type="dinov3_convnext", license="dinov3-license", gated=True)


# The wider family: (timm tag, variant, size, crop_pct, labels, top-1 or None, extra fields).
_FAMILY_ROWS = (
    # timm's ImageNet-12k models and their ImageNet-1k fine-tunes.
    _timm("convnext_nano.in12k", "nano", 224, 0.95, _12K),
    _timm("convnext_tiny.in12k", "tiny", 224, 0.95, _12K),
    _timm("convnext_small.in12k", "small", 224, 0.95, _12K),
    _timm("convnext_tiny.in12k_ft_in1k", "tiny", 224, 0.95, _1K, 84.192),
    _timm("convnext_small.in12k_ft_in1k", "small", 224, 0.95, _1K, 85.164),
    _timm("convnext_tiny.in12k_ft_in1k_384", "tiny", 384, None, _1K, 85.154),
    _timm("convnext_small.in12k_ft_in1k_384", "small", 384, None, _1K, 86.186),
    # LAION CLIP image towers (embedding heads) and their fine-tunes.
    _timm("convnext_base.clip_laion2b", "base", 256, 1.0, _CLIP, head_size=640),
    _timm("convnext_base.clip_laion2b_augreg", "base", 256, 1.0, _CLIP, head_size=640),
    _timm("convnext_base.clip_laiona", "base", 256, 1.0, _CLIP, head_size=640),
    _timm("convnext_large_mlp.clip_laion2b_augreg", "large", 256, 1.0, _CLIP, head_size=768),
    _timm("convnext_xxlarge.clip_laion2b_soup", "xxlarge", 256, 1.0, _CLIP, head_size=1024),
    _timm("convnext_base.clip_laion2b_augreg_ft_in1k", "base", 256, 1.0, _1K, 86.184),
    _timm("convnext_base.clip_laion2b_augreg_ft_in12k", "base", 256, 1.0, _12K),
    _timm("convnext_base.clip_laion2b_augreg_ft_in12k_in1k", "base", 256, 1.0, _1K, 86.378),
    _timm("convnext_base.clip_laion2b_augreg_ft_in12k_in1k_384", "base", 384, None, _1K, 87.144),
    _timm("convnext_large_mlp.clip_laion2b_augreg_ft_in1k", "large", 256, 1.0, _1K, 87.344),
    _timm("convnext_large_mlp.clip_laion2b_augreg_ft_in1k_384", "large", 384, None, _1K, 87.890),
    _timm("convnext_large_mlp.clip_laion2b_soup_ft_in12k_in1k_320", "large", 320, 1.0, _1K, 87.970),
    _timm("convnext_large_mlp.clip_laion2b_soup_ft_in12k_in1k_384", "large", 384, None, _1K, 88.334),
    _timm("convnext_xxlarge.clip_laion2b_soup_ft_in1k", "xxlarge", 256, 1.0, _1K, 88.622),
    # timm's structural variants: overlapping stems, head norm first, SimpleNorm.
    _timm("convnext_atto_ols.a2_in1k", "atto", 224, 0.875, _1K, 75.902),
    _timm("convnext_femto_ols.d1_in1k", "femto", 224, 0.875, _1K, 77.852),
    _timm("convnext_pico_ols.d1_in1k", "pico", 224, 0.95, _1K, 79.542),
    _timm("convnext_nano_ols.d1h_in1k", "nano", 224, 0.95, _1K, 80.906),
    _timm("convnext_tiny_hnf.a2h_in1k", "tiny", 224, 0.95, _1K, 82.230),
    _timm("convnext_zepto_rms.ra4_e3600_r224_in1k", "zepto", 224, 0.875, _1K, 72.820),
    _timm("convnext_zepto_rms_ols.ra4_e3600_r224_in1k", "zepto", 224, 0.9, _1K, 73.234),
    # DINOv3 ConvNeXt (self-supervised on LVD-1689M; no head), gated.
    *(_dinov3(v) for v in ("tiny", "small", "base", "large")),
)

_V2_LICENSE = "cc-by-nc-4.0"


def _v2(variant, pretrain, size, top1):
    """A ConvNeXt V2 row: FCMAE pre-trained, fine-tuned on ImageNet-1k (``pretrain`` "1k"), or on
    ImageNet-22k and then ImageNet-1k ("22k"); a 1000-class head either way."""
    hf = f"convnextv2-{variant}-{pretrain}-{size}"
    tag = "fcmae_ft_in1k" if pretrain == "1k" else "fcmae_ft_in22k_in1k" + ("" if size == 224 else f"_{size}")
    fb = f"im{pretrain}/convnextv2_{variant}_{pretrain}_{size}_ema"
    return Checkpoint(hf, variant, f"facebook/{hf}", f"convnextv2_{variant}.{tag}", fb, size, 0.875 if size < 384 else None, _1K,
                      model_type="convnextv2", top1=top1, license=_V2_LICENSE)


# (variant, pre-training, size, top-1): the facebookresearch/ConvNeXt-V2 README's tables.
_V2_ROWS = (
    ("atto", "1k", 224, 76.7), ("femto", "1k", 224, 78.5), ("pico", "1k", 224, 80.3),
    ("nano", "1k", 224, 81.9), ("tiny", "1k", 224, 83.0), ("base", "1k", 224, 84.9),
    ("large", "1k", 224, 85.8), ("huge", "1k", 224, 86.3),
    ("nano", "22k", 224, 82.1), ("nano", "22k", 384, 83.4), ("tiny", "22k", 224, 83.9),
    ("tiny", "22k", 384, 85.1), ("base", "22k", 224, 86.8), ("base", "22k", 384, 87.7),
    ("large", "22k", 224, 87.3), ("large", "22k", 384, 88.2), ("huge", "22k", 384, 88.7),
    ("huge", "22k", 512, 88.9),
)

CHECKPOINTS = (
    # ImageNet-1k, trained at 224 (EMA weights) or fine-tuned at 384.
    Checkpoint("convnext-tiny-224", "tiny", "facebook/convnext-tiny-224", "convnext_tiny.fb_in1k", "convnext_tiny_1k_224_ema", 224, 0.875, _1K),
    Checkpoint("convnext-small-224", "small", "facebook/convnext-small-224", "convnext_small.fb_in1k", "convnext_small_1k_224_ema", 224, 0.875, _1K),
    Checkpoint("convnext-base-224", "base", "facebook/convnext-base-224", "convnext_base.fb_in1k", "convnext_base_1k_224_ema", 224, 0.875, _1K),
    Checkpoint("convnext-large-224", "large", "facebook/convnext-large-224", "convnext_large.fb_in1k", "convnext_large_1k_224_ema", 224, 0.875, _1K),
    Checkpoint("convnext-base-384", "base", "facebook/convnext-base-384", None, "convnext_base_1k_384", 384, None, _1K),
    Checkpoint("convnext-large-384", "large", "facebook/convnext-large-384", None, "convnext_large_1k_384", 384, None, _1K),
    # ImageNet-22k (21841 classes).
    Checkpoint("convnext-tiny-224-22k", "tiny", None, "convnext_tiny.fb_in22k", "convnext_tiny_22k_224", 224, 0.875, _22K),
    Checkpoint("convnext-small-224-22k", "small", None, "convnext_small.fb_in22k", "convnext_small_22k_224", 224, 0.875, _22K),
    Checkpoint("convnext-base-224-22k", "base", "facebook/convnext-base-224-22k", "convnext_base.fb_in22k", "convnext_base_22k_224", 224, 0.875, _22K),
    Checkpoint("convnext-large-224-22k", "large", "facebook/convnext-large-224-22k", "convnext_large.fb_in22k", "convnext_large_22k_224", 224, 0.875, _22K),
    Checkpoint("convnext-xlarge-224-22k", "xlarge", "facebook/convnext-xlarge-224-22k", "convnext_xlarge.fb_in22k", "convnext_xlarge_22k_224", 224, 0.875, _22K),
    # ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 224 and 384.
    Checkpoint("convnext-tiny-224-22k-1k", "tiny", None, "convnext_tiny.fb_in22k_ft_in1k", "convnext_tiny_22k_1k_224", 224, 0.875, _1K),
    Checkpoint("convnext-small-224-22k-1k", "small", None, "convnext_small.fb_in22k_ft_in1k", "convnext_small_22k_1k_224", 224, 0.875, _1K),
    Checkpoint("convnext-base-224-22k-1k", "base", "facebook/convnext-base-224-22k-1k", "convnext_base.fb_in22k_ft_in1k", "convnext_base_22k_1k_224", 224, 0.875, _1K),
    Checkpoint("convnext-large-224-22k-1k", "large", "facebook/convnext-large-224-22k-1k", "convnext_large.fb_in22k_ft_in1k", "convnext_large_22k_1k_224", 224, 0.875, _1K),
    Checkpoint("convnext-xlarge-224-22k-1k", "xlarge", "facebook/convnext-xlarge-224-22k-1k", "convnext_xlarge.fb_in22k_ft_in1k", "convnext_xlarge_22k_1k_224_ema", 224, 0.875, _1K),
    Checkpoint("convnext-tiny-384-22k-1k", "tiny", None, "convnext_tiny.fb_in22k_ft_in1k_384", "convnext_tiny_22k_1k_384", 384, None, _1K),
    Checkpoint("convnext-small-384-22k-1k", "small", None, "convnext_small.fb_in22k_ft_in1k_384", "convnext_small_22k_1k_384", 384, None, _1K),
    Checkpoint("convnext-base-384-22k-1k", "base", "facebook/convnext-base-384-22k-1k", "convnext_base.fb_in22k_ft_in1k_384", "convnext_base_22k_1k_384", 384, None, _1K),
    Checkpoint("convnext-large-384-22k-1k", "large", "facebook/convnext-large-384-22k-1k", "convnext_large.fb_in22k_ft_in1k_384", "convnext_large_22k_1k_384", 384, None, _1K),
    Checkpoint("convnext-xlarge-384-22k-1k", "xlarge", "facebook/convnext-xlarge-384-22k-1k", "convnext_xlarge.fb_in22k_ft_in1k_384", "convnext_xlarge_22k_1k_384_ema", 384, None, _1K),
    # timm originals (conv-MLP variants), ImageNet-1k.
    Checkpoint("convnext-atto", "atto", None, "convnext_atto.d2_in1k", None, 224, 0.875, _1K),
    Checkpoint("convnext-femto", "femto", None, "convnext_femto.d1_in1k", None, 224, 0.875, _1K),
    Checkpoint("convnext-pico", "pico", None, "convnext_pico.d1_in1k", None, 224, 0.875, _1K),
    Checkpoint("convnext-nano", "nano", None, "convnext_nano.d1h_in1k", None, 224, 0.95, _1K),
    Checkpoint("convnext-nano-12k-1k", "nano", None, "convnext_nano.in12k_ft_in1k", None, 224, 0.95, _1K),
    *_FAMILY_ROWS,
    *(_v2(*row) for row in _V2_ROWS),
)


def find_checkpoint(name: str) -> Checkpoint | None:
    """The row whose alias, HF id or timm name (with or without ``timm/``) is ``name``."""
    bare = name.removeprefix("timm/")
    for row in CHECKPOINTS:
        if name in (row.alias, row.hf_id) or bare == row.timm:
            return row
    return None
