"""The ``convnext-np`` command line: classify, features, convert, info, golden, verify.

Exit status (``shared/api.md``): 0 when every input was handled, 1 when any input failed (the
others are still reported), 2 for usage errors or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .classify import DEFAULT_MODEL, iter_classify, load_model
from .config import V2_VARIANTS, VARIANTS, ConvNextConfig
from .errors import ConvNextError, ImageError
from .golden import add_golden_parser
from .published import add_verify_parser
from .summary import stage_rows

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".ico", ".jfif"}


class ModelLoadError(Exception):
    """The model named on the command line could not be loaded (exit status 2)."""


def expand_paths(paths) -> list:
    """Files as given; directories searched recursively for image files, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


class Progress:
    """``done/total`` on stderr, redrawn at most every 0.2 s; only where stderr is a terminal
    (or when forced with --progress)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self._last = total, 0, enabled and total > 1, 0.0

    def step(self):
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            print(f"\r{self.done}/{self.total} images", end="", file=sys.stderr, flush=True)
            if self.done == self.total:
                print(file=sys.stderr)


def _load(args):
    try:
        return load_model(args.model, backend=args.backend)
    except (ConvNextError, OSError, ValueError) as e:
        raise ModelLoadError(str(e)) from None


def load_or_report(args):
    """The model of ``args.model``, or None after saying on stderr why it cannot load (the
    commands then exit 2). For commands that must clean up before exiting."""
    try:
        return _load(args)
    except ModelLoadError as e:
        _report_load_error(args, e)
        return None


def _report_load_error(args, error) -> None:
    print(f"convnext-np: error: cannot load model {args.model!r}: {error}", file=sys.stderr)


def _progress_enabled(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


# --- classify ---------------------------------------------------------------------------------
class _Writer:
    """Prints results in one of the formats, in input order, streaming where the format allows."""

    def __init__(self, fmt: str, out=None):
        self.fmt, self.out, self.items = fmt, out or sys.stdout, []
        if fmt == "csv":
            self.csv = csv.writer(self.out)
            self.csv.writerow(["image", "rank", "index", "label", "score", "error"])

    def add(self, image: str, predictions, error):
        item = {"image": image}
        if error is None:
            item["predictions"] = [{"label": p.label, "index": p.index, "score": p.score} for p in predictions]
        else:
            item["error"] = str(error)
        if self.fmt == "json":
            self.items.append(item)
        elif self.fmt == "jsonl":
            print(json.dumps(item, ensure_ascii=False), file=self.out, flush=True)
        elif self.fmt == "csv":
            if error is not None:
                self.csv.writerow([image, "", "", "", "", str(error)])
            for rank, p in enumerate(predictions or (), 1):
                self.csv.writerow([image, rank, p.index, p.label, f"{p.score:.6f}", ""])
        else:
            print(image, file=self.out)
            if error is not None:
                print(f"  error: {error}", file=self.out)
            for rank, p in enumerate(predictions or (), 1):
                print(f"  {rank}. {p.score:7.2%}  {p.label}  ({p.index})", file=self.out)

    def close(self):
        if self.fmt == "json":
            json.dump(self.items, self.out, indent=2, ensure_ascii=False)
            print(file=self.out)


def cmd_classify(args) -> int:
    paths = expand_paths(args.paths)
    if not paths:
        print("convnext-np: error: no image files found in the given paths", file=sys.stderr)
        return EXIT_INPUT_FAILED
    model = _load(args)
    writer, progress, failed = _Writer(args.format), Progress(len(paths), _progress_enabled(args)), 0
    for path, predictions, error in iter_classify(paths, model, args.top_k, args.batch_size):
        if error is not None:
            failed += 1
            print(f"convnext-np: {error}", file=sys.stderr)
        writer.add(str(path), predictions, error)
        progress.step()
    writer.close()
    return EXIT_INPUT_FAILED if failed else EXIT_OK


# --- features ---------------------------------------------------------------------------------
def cmd_features(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        print("convnext-np: error: --out must end in .npy or .safetensors", file=sys.stderr)
        return EXIT_USAGE
    paths = expand_paths(args.paths)
    model = _load(args)
    done, features, failed = [], [], 0
    progress = Progress(len(paths), _progress_enabled(args))
    for start in range(0, len(paths), args.batch_size):
        batch, pixels = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                pixels.append(model.preprocessor.preprocess(path))
                batch.append(path)
            except ImageError as e:
                failed += 1
                print(f"convnext-np: {e}", file=sys.stderr)
            progress.step()
        if pixels:
            features.append(model(np.stack(pixels)).pooled)
            done += batch
    pooled = np.concatenate(features) if features else np.zeros((0, model.config.hidden_sizes[-1]), np.float32)
    names = [str(p) for p in done]
    if out.suffix == ".npy":
        np.save(out, pooled)
        Path(f"{out}.images.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    else:
        from safetensors.numpy import save_file

        save_file({"pooled": pooled}, str(out), metadata={"images": json.dumps(names),
                                                          "model": str(model.source)})
    print(f"wrote {pooled.shape[0]} x {pooled.shape[1]} pooled features to {out}", file=sys.stderr)
    return EXIT_INPUT_FAILED if failed else EXIT_OK


# --- convert, info ----------------------------------------------------------------------------
def cmd_convert(args) -> int:
    model = _load(args)
    model.save_pretrained(args.out)
    for name in sorted(os.listdir(args.out)):
        print(Path(args.out) / name)
    return EXIT_OK


def cmd_info(args) -> int:
    table = V2_VARIANTS if args.v2 else VARIANTS
    if args.model in table:
        config = ConvNextConfig.from_variant(args.model, model_type="convnextv2" if args.v2 else "convnext")
    elif args.v2:
        print(f"convnext-np: error: --v2 takes a variant ({', '.join(V2_VARIANTS)}); a model's weights say "
              "whether it is ConvNeXt V2", file=sys.stderr)
        return EXIT_USAGE
    else:
        config = _load(args).config
    height, width = args.size, args.width or args.size
    family = "ConvNeXt V2" if config.model_type == "convnextv2" else "ConvNeXt"
    print(f"{family} {config.variant() or 'custom'}: depths {config.depths}, widths "
          f"{config.hidden_sizes}, {config.num_labels} classes, input 3x{height}x{width}")
    print(f"{'part':8s} {'output (C, H, W)':>18s} {'params':>12s} {'GMACs':>8s}")
    rows = stage_rows(config, height, width)
    for r in rows:
        print(f"{r['name']:8s} {str(r['shape']):>18s} {r['params']:>12,d} {r['macs'] / 1e9:>8.3f}")
    print(f"{'total':8s} {'':>18s} {sum(r['params'] for r in rows):>12,d} "
          f"{sum(r['macs'] for r in rows) / 1e9:>8.3f}")
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext-np",
        description="ConvNeXt in NumPy: classify images, extract features, convert weights.",
        epilog="exit status: 0 all inputs handled, 1 some input failed, 2 usage error or the "
               "model could not be loaded")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    def add(name, help, description, examples, func):
        p = sub.add_parser(name, help=help, description=description, formatter_class=raw,
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))
        p.set_defaults(func=func)
        return p

    def model_options(p, default=DEFAULT_MODEL):
        p.add_argument("--model", "-m", default=default,
                       help="hub id, timm name, alias, or a local directory / weights file "
                            f"(default: {default})")
        p.add_argument("--backend", choices=("auto", "numba", "numpy"), default="auto",
                       help="implementation of the ops (default: auto)")

    def batch_options(p):
        p.add_argument("--batch-size", "-b", type=_positive, default=8,
                       help="images per forward pass; bounds memory (default: 8)")
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress on stderr (default: when stderr is a terminal)")

    p = add("classify", "top-k ImageNet labels for images",
            "Classify image files (directories are searched recursively). Unreadable files are "
            "reported and the rest go on.",
            ["convnext-np classify cat.jpg", "convnext-np classify photos/ --top-k 3 --format csv",
             "convnext-np classify img.png --model ./convnext-tiny-224 --format json"], cmd_classify)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    model_options(p)
    p.add_argument("--top-k", "-k", type=_positive, default=5, help="labels per image (default: 5)")
    p.add_argument("--format", "-f", choices=("table", "json", "jsonl", "csv"), default="table",
                   help="output format (default: table)")
    batch_options(p)

    p = add("features", "pooled embeddings of images to .npy or .safetensors",
            "Write the pooled features (global average pool + final LayerNorm, as HF's "
            "pooler_output and timm's pre_logits) of each image, one row per readable image. "
            "With .npy the image paths go to OUT.images.txt; with .safetensors into its metadata.",
            ["convnext-np features photos/ --out feats.npy",
             "convnext-np features a.jpg b.jpg --out feats.safetensors --model convnext_tiny.fb_in1k"],
            cmd_features)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    p.add_argument("--out", "-o", required=True, help="output file, .npy or .safetensors")
    model_options(p)
    batch_options(p)

    p = add("convert", "any supported weights to Hugging Face layout safetensors",
            "Load weights in any supported layout (HF, timm, facebookresearch; safetensors, .bin, "
            ".pth; F32/F16/BF16) and write config.json, model.safetensors and "
            "preprocessor_config.json that transformers loads.",
            ["convnext-np convert convnext_tiny_1k_224_ema.pth out/",
             "convnext-np convert ./timm-convnext-atto out/"], cmd_convert)
    p.add_argument("model", help="weights to convert: a directory, a file or a name")
    p.add_argument("out", help="output directory")
    p.add_argument("--backend", default="numpy", help=argparse.SUPPRESS)

    p = add("info", "architecture, parameters and MACs per stage",
            "Print each part's output shape, parameter count and multiply-accumulates (what the "
            "paper's FLOPs column counts) for a variant or any model.",
            ["convnext-np info tiny", "convnext-np info base --size 384", "convnext-np info huge --v2",
             "convnext-np info ./my-checkpoint --size 224 --width 320"], cmd_info)
    p.add_argument("model", help=f"a variant ({', '.join(VARIANTS)}; with --v2 also huge) or a model")
    p.add_argument("--v2", action="store_true",
                   help="the variant as ConvNeXt V2 (Woo et al. 2023: GRN in every block, no layer scale)")
    p.add_argument("--size", type=_positive, default=224, help="input height (default: 224)")
    p.add_argument("--width", type=_positive, default=None, help="input width (default: = size)")
    p.add_argument("--backend", default="numpy", help=argparse.SUPPRESS)

    add_golden_parser(sub)
    add_verify_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelLoadError as e:
        _report_load_error(args, e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
