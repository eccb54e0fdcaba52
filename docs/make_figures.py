"""Render the figures of docs/architecture.md with Pillow and NumPy only.

    python docs/make_figures.py            # writes docs/figures/stages.png and feature_maps.png
    python docs/make_figures.py --out DIR

- ``stages.png``: ConvNeXt-T's stage diagram at 224. Box heights are the feature-map sides,
  box widths grow with the channel count; every number under a box (shape, parameters,
  GMACs) comes from :func:`convnext_np.summary.stage_rows`, the table ``convnext-np info``
  prints, and none is typed here.
- ``feature_maps.png``: ``tests/data/images/chelsea.png`` through ConvNeXt-T, a few channels of
  each hidden state. There are no trained weights in this repository, so the model has
  *realistic random weights* (:mod:`convnext_np.testing`): the maps show the shapes and the
  resolutions, not learned features. The figure says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import convnext_np as cnp
from convnext_np import weights
from convnext_np.summary import stage_rows
from convnext_np.testing import realistic_state_dict

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "tests" / "data" / "images" / "chelsea.png"
INK, MUTED, PAPER = (33, 37, 41), (108, 117, 125), (255, 255, 255)
STAGE_COLORS = [(77, 128, 196), (64, 160, 150), (112, 173, 71), (230, 160, 40), (214, 96, 77)]
# Five anchors of viridis; np.interp between them gives a colour map without matplotlib.
VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], float)


def font(size: int, bold: bool = False):
    """A scalable font where Pillow has FreeType (10.1+), else Pillow's bitmap default."""
    for name in (("DejaVuSans-Bold.ttf", "Arial Bold.ttf") if bold else ("DejaVuSans.ttf", "Arial.ttf")):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def centered(draw, xy, text, fnt, fill=INK):
    x, y = xy
    w = draw.textlength(text, font=fnt)
    draw.text((x - w / 2, y), text, font=fnt, fill=fill)


def arrow(draw, x0, x1, y, fill=MUTED, width=3):
    draw.line([(x0, y), (x1 - 10, y)], fill=fill, width=width)
    draw.polygon([(x1, y), (x1 - 12, y - 7), (x1 - 12, y + 7)], fill=fill)


def lighter(rgb, t=0.75):
    return tuple(int(c + (255 - c) * t) for c in rgb)


# --- stages.png -------------------------------------------------------------------------------
def stages_figure(config: cnp.ConvNextConfig, size: int = 224) -> Image.Image:
    rows = stage_rows(config, size)
    W, H = 1600, 830
    img = Image.new("RGB", (W, H), PAPER)
    d = ImageDraw.Draw(img)
    title, body, small = font(30, bold=True), font(19), font(16)
    d.text((40, 24), f"ConvNeXt-{config.variant()[0].upper()} at {size}x{size}: patchify stem, "
                     "four stages, head", font=title, fill=INK)
    d.text((40, 66), "box height = feature-map side, box width grows with channels; numbers from "
                     "convnext_np.summary.stage_rows (convnext-np info)", font=small, fill=MUTED)

    mid, scale = 290, 4.2  # vertical centre line; pixels per feature-map row (56 -> 235 px)
    boxes = [("input", (3, size, size), None, None)] + [
        (r["name"], r["shape"], r["params"], r["macs"]) for r in rows[:-1]]
    x = 75
    centres = []
    for i, (name, shape, params, macs) in enumerate(boxes):
        c, h, _ = shape
        bh = max(24, h * scale) if name != "input" else 56 * scale
        bw = 26 + 5.2 * np.sqrt(c)
        color = (150, 150, 150) if name == "input" else STAGE_COLORS[i - 1]
        d.rectangle([x, mid - bh / 2, x + bw, mid + bh / 2], fill=lighter(color), outline=color, width=3)
        cx = x + bw / 2
        centres.append((cx, x, x + bw))
        label = {"input": "input", "stem": "stem"}.get(name, f"stage {name[-1]}")
        centered(d, (cx, mid + 140), label, font(21, bold=True), color if name != "input" else INK)
        centered(d, (cx, mid + 168), f"{c} x {h} x {shape[2]}", body)
        if name == "input":
            centered(d, (cx, mid + 194), "RGB, normalized", small, MUTED)
        elif name == "stem":
            centered(d, (cx, mid + 194), "4x4 conv, stride 4", small, MUTED)
            centered(d, (cx, mid + 214), "+ LayerNorm", small, MUTED)
        else:
            depth = config.depths[int(name[-1]) - 1]
            centered(d, (cx, mid + 194), f"{depth} blocks", small, MUTED)
        if params is not None:
            centered(d, (cx, mid + 240), f"{params:,} params", small)
            centered(d, (cx, mid + 260), f"{macs / 1e9:.3f} GMACs", small)
        x += bw + (150 if i >= 2 else 95)

    for i in range(len(centres) - 1):
        x0, x1 = centres[i][2] + 8, centres[i + 1][1] - 8
        arrow(d, x0, x1, mid)
        if i >= 2:  # before stages 2, 3, 4
            centered(d, ((x0 + x1) / 2, mid - 46), "LayerNorm", small, MUTED)
            centered(d, ((x0 + x1) / 2, mid - 26), "2x2 conv /2", small, MUTED)

    head = rows[-1]
    hx = centres[-1][2] + 40
    arrow(d, centres[-1][2] + 8, hx, mid)
    steps = ["global avg pool", "LayerNorm", f"Linear -> {head['shape'][0]}"]
    for j, step in enumerate(steps):
        y = mid - 75 + j * 52
        d.rounded_rectangle([hx, y, hx + 175, y + 38], radius=8, fill=(245, 240, 250),
                            outline=(120, 90, 160), width=2)
        centered(d, (hx + 87, y + 8), step, small)
        if j:
            d.line([(hx + 87, y - 14), (hx + 87, y)], fill=MUTED, width=2)
    centered(d, (hx + 87, mid + 140), "head", font(21, bold=True), (120, 90, 160))
    centered(d, (hx + 87, mid + 240), f"{head['params']:,} params", small)
    centered(d, (hx + 87, mid + 260), f"{head['macs'] / 1e9:.3f} GMACs", small)
    total_p, total_m = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    d.text((40, mid + 300), f"total: {total_p:,} parameters, {total_m / 1e9:.2f} GMACs "
                           "(convolutions and Linear layers; the paper's 'FLOPs')", font=body, fill=INK)

    # The block, the unit every stage repeats.
    by, bx = 700, 40
    d.text((bx, by - 58), "one block, width C (channels-last inside; paper Fig. 4):", font=font(20, bold=True), fill=INK)
    ops = ["depthwise 7x7", "LayerNorm", "Linear C->4C", "GELU (erf)", "Linear 4C->C", "x gamma (layer scale)"]
    widths = [170, 140, 160, 140, 160, 230]
    x = bx + 60
    d.text((bx, by + 8), "x", font=font(22, bold=True), fill=INK)
    starts = []
    for op, w in zip(ops, widths):
        arrow(d, x - 40, x - 6, by + 19, width=2)
        d.rounded_rectangle([x, by, x + w, by + 40], radius=8, fill=(240, 244, 250), outline=(77, 128, 196), width=2)
        centered(d, (x + w / 2, by + 10), op, small)
        starts.append(x)
        x += w + 50
    arrow(d, x - 40, x - 4, by + 19, width=2)
    d.ellipse([x, by + 2, x + 36, by + 38], outline=INK, width=2)
    centered(d, (x + 18, by + 6), "+", font(24, bold=True))
    arrow(d, x + 40, x + 86, by + 19, width=2)
    d.text((x + 94, by + 6), "out", font=font(20, bold=True), fill=INK)
    d.line([(bx + 8, by + 40), (bx + 8, by + 80), (x + 18, by + 80), (x + 18, by + 44)], fill=MUTED, width=2)
    d.polygon([(x + 18, by + 40), (x + 11, by + 52), (x + 25, by + 52)], fill=MUTED)
    centered(d, ((bx + x) / 2, by + 84), "residual", small, MUTED)
    return img


# --- feature_maps.png -------------------------------------------------------------------------
def colormap(x: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8, viridis-like, in 32 levels."""
    t = np.round(np.clip(x, 0, 1) * 31) / 31 * (len(VIRIDIS) - 1)  # 32 levels: a smaller PNG
    rgb = [np.interp(t, np.arange(len(VIRIDIS)), VIRIDIS[:, k]) for k in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def tile(channel: np.ndarray, side: int) -> Image.Image:
    lo, hi = np.percentile(channel, [1, 99])
    x = (channel - lo) / (hi - lo + 1e-12)
    # NEAREST keeps each feature-map cell a visible square: the resolution is the point.
    return Image.fromarray(colormap(x)).resize((side, side), Image.Resampling.NEAREST)


def feature_maps_figure(model: cnp.ConvNeXt, image_path: Path, channels: int = 6, side: int = 112) -> Image.Image:
    pixels = model.preprocessor([image_path])
    out = model(pixels, output_hidden_states=True)
    crop = model.preprocessor.resize_and_crop(cnp.preprocess.load_rgb(image_path))
    label_w, gap, top = 230, 6, 96
    W = label_w + channels * (side + gap) + 10
    H = top + (1 + len(out.hidden_states)) * (side + 26) + 40
    img = Image.new("RGB", (W, H), PAPER)
    d = ImageDraw.Draw(img)
    d.text((16, 14), "Feature maps of ConvNeXt-T on tests/data/images/chelsea.png", font=font(22, bold=True), fill=INK)
    d.text((16, 44), "RANDOM weights (convnext_np.testing.realistic_state_dict), not trained: the maps",
           font=font(15), fill=(180, 40, 40))
    d.text((16, 64), "show each stage's shape and resolution, not learned features. Highest-variance "
                     "channels, 1-99% range.", font=font(15), fill=(180, 40, 40))
    names = ["stem", "stage 1", "stage 2", "stage 3", "stage 4"]
    y = top
    d.text((16, y + side / 2 - 20), "input", font=font(18, bold=True), fill=INK)
    d.text((16, y + side / 2 + 4), f"3 x {pixels.shape[2]} x {pixels.shape[3]}", font=font(15), fill=MUTED)
    img.paste(Image.fromarray(np.asarray(crop)).resize((side, side), Image.Resampling.BILINEAR), (label_w, y))
    d.text((label_w + 3, y + side + 2), "the crop", font=font(12), fill=MUTED)
    for k in range(3):
        img.paste(tile(pixels[0, k], side), (label_w + (k + 1) * (side + gap), y))
        d.text((label_w + (k + 1) * (side + gap) + 3, y + side + 2), f"{'RGB'[k]}, normalized", font=font(12), fill=MUTED)
    y += side + 26
    for name, h, color in zip(names, out.hidden_states, STAGE_COLORS):
        maps = h[0]  # (C, H, W)
        picked = np.argsort(-maps.reshape(maps.shape[0], -1).var(axis=1), kind="stable")[:channels]
        d.text((16, y + side / 2 - 20), name, font=font(18, bold=True), fill=color)
        d.text((16, y + side / 2 + 4), f"{maps.shape[0]} x {maps.shape[1]} x {maps.shape[2]}", font=font(15), fill=MUTED)
        for j, c in enumerate(picked):
            x = label_w + j * (side + gap)
            img.paste(tile(maps[c], side), (x, y))
            d.text((x + 3, y + side + 2), f"ch {c}", font=font(12), fill=MUTED)
        y += side + 26
    return img


def random_tiny() -> cnp.ConvNeXt:
    config = cnp.ConvNextConfig.from_variant("tiny")
    state = realistic_state_dict(weights.expected_shapes(config), seed=0)
    return cnp.ConvNeXt(config, weights.to_params(state, config, "random weights"), backend="numpy",
                        preprocessor=cnp.ImageProcessor(), source="realistic random weights, seed 0")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Render docs/figures/*.png")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = random_tiny()
    for name, figure in (("stages.png", stages_figure(model.config)),
                         ("feature_maps.png", feature_maps_figure(model, IMAGE))):
        path = args.out / name
        figure.save(path, optimize=True)
        print(f"{path}  {figure.size[0]}x{figure.size[1]}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
