"""The ``convnext-np`` command line: classify, features, convert, info, evaluate, fit-head,
golden, verify. Every subcommand is defined here, over the library functions it runs.

Exit status: 0 when every input was handled, 1 when any input failed (the others are still
reported), 2 for usage errors (no image files found, an output that cannot be written, a model
without the head a command needs) or a model that cannot be loaded. Output destinations are
checked before any compute. When the reader of stdout goes away (``| head``) the command stops
quietly with 141 (128 + SIGPIPE), as Unix tools do.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import golden, published
from .classify import DEFAULT_MODEL, expand_paths, iter_classify, iter_forward, load_model, require_pooled
from .config import V2_VARIANTS, VARIANTS, ConvNextConfig
from .family import describe
from .errors import ConvNextError, ImageError
from .evaluate import evaluate, read_dataset
from .guards import check_output_dir, check_output_file
from .head import fit_head
from .model import MIN_INPUT_SIZE
from .preprocess import PROFILES, load_rgb
from .progress import StatusLine
from .summary import stage_rows

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE


class ModelLoadError(Exception):
    """The model named on the command line could not be loaded (exit status 2)."""


class Progress:
    """``done/total images`` on stderr (a :class:`~convnext_np.progress.StatusLine`); only where
    stderr is a terminal (or when forced with --progress), and only for more than one image."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done = total, 0
        self.line = StatusLine(enabled and total > 1)

    def step(self):
        self.done += 1
        self.line.draw(f"{self.done}/{self.total} images", final=self.done == self.total)


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


def report_no_images() -> int:
    """The one rule for every command that takes images: none found is a usage error (2)."""
    print("convnext-np: error: no image files found in the given paths", file=sys.stderr)
    return EXIT_USAGE


def _output_error(option: str, error) -> int:
    print(f"convnext-np: error: {option} {error}", file=sys.stderr)
    return EXIT_USAGE


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
        return report_no_images()
    model = _load(args)
    if model.config.num_labels == 0:
        print(f"convnext-np: error: model {args.model!r} has no classification head (a "
              "backbone); use `convnext-np features` for its pooled features", file=sys.stderr)
        return EXIT_USAGE
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
    try:
        check_output_file(out)
    except ConvNextError as e:
        return _output_error("--out", e)
    paths = expand_paths(args.paths)
    if not paths:
        return report_no_images()
    model = _load(args)
    try:
        require_pooled(model)
    except ValueError as e:
        print(f"convnext-np: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    done, features, failed = [], [], 0
    progress = Progress(len(paths), _progress_enabled(args))
    for path, _, pooled, error in iter_forward(paths, model, args.batch_size):
        if error is not None:
            failed += 1
            print(f"convnext-np: {error}", file=sys.stderr)
        else:
            features.append(pooled)
            done.append(path)
        progress.step()
    pooled = np.stack(features) if features else np.zeros((0, model.config.hidden_sizes[-1]), np.float32)
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
    try:
        check_output_dir(args.out)
    except ConvNextError as e:
        return _output_error("output directory", e)
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
    if describe(config):
        print(f"structure: {describe(config)}")
    print(f"{'part':8s} {'output (C, H, W)':>18s} {'params':>12s} {'GMACs':>8s}")
    rows = stage_rows(config, height, width)
    for r in rows:
        print(f"{r['name']:8s} {str(r['shape']):>18s} {r['params']:>12,d} {r['macs'] / 1e9:>8.3f}")
    print(f"{'total':8s} {'':>18s} {sum(r['params'] for r in rows):>12,d} "
          f"{sum(r['macs'] for r in rows) / 1e9:>8.3f}")
    return EXIT_OK


# --- evaluate, fit-head -----------------------------------------------------------------------
def _read_labelled(args):
    """The dataset's (image, label) pairs, or None after saying why on stderr (exit 2)."""
    try:
        return read_dataset(args.dataset)
    except ValueError as e:
        print(f"convnext-np: error: {e}", file=sys.stderr)
        return None


def cmd_evaluate(args) -> int:
    pairs = _read_labelled(args)
    if pairs is None:
        return EXIT_USAGE
    model = _load(args)
    progress = Progress(len(pairs), _progress_enabled(args))
    try:
        report = evaluate(pairs, model, tuple(args.top_k), profile=args.profile,
                          batch_size=args.batch_size, progress=progress.step)
    except ValueError as e:  # labels the model does not have
        print(f"convnext-np: error: {args.dataset}: {e}", file=sys.stderr)
        return EXIT_USAGE
    report.dataset = str(args.dataset)
    if args.format == "json":  # the table lists the unreadable images itself
        for _, why in report.unreadable:
            print(f"convnext-np: {why}", file=sys.stderr)
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        print(report.format_table())
    return EXIT_INPUT_FAILED if report.unreadable else EXIT_OK


def default_cache_dir() -> Path:
    """Where fit-head keeps pooled features: $XDG_CACHE_HOME (else ~/.cache)/convnext_np/features."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convnext_np" / "features"


def cmd_fit_head(args) -> int:
    pairs = _read_labelled(args)
    if pairs is None:
        return EXIT_USAGE
    model = _load(args)
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    progress = Progress(len(pairs), _progress_enabled(args))
    try:
        fitted = fit_head(model, [p for p, _ in pairs], [label for _, label in pairs],
                          val_fraction=args.val_fraction, l2=args.l2, seed=args.seed,
                          profile=args.profile, batch_size=args.batch_size, cache_dir=cache,
                          progress=progress.step)
    except ValueError as e:
        print(f"convnext-np: error: {args.dataset}: {e}", file=sys.stderr)
        return EXIT_USAGE
    r = fitted.fit_report
    for _, why in r.unreadable:
        print(f"convnext-np: {why}", file=sys.stderr)
    print(f"features: {r.computed + r.cached} images ({r.computed} computed, {r.cached} from the "
          f"cache) in {r.feature_seconds:.1f} s" + (f"; cache {cache}" if cache else ""))
    print(f"head:     {len(r.labels)} classes on {fitted.config.hidden_sizes[-1]} features, "
          f"{r.n_train} training images, l2 {r.l2:.3g}, L-BFGS {r.iterations} iterations "
          f"({'converged' if r.converged else 'not converged: ' + r.message}) in {r.fit_seconds:.1f} s")
    val = "-" if r.val_accuracy is None else f"{r.val_accuracy:.2%} of {r.n_val}"
    print(f"accuracy: training {r.train_accuracy:.2%}, validation {val}")
    fitted.save_pretrained(args.out)
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in sorted(os.listdir(args.out)))}")
    if not (Path(args.out) / "preprocessor_config.json").is_file():
        print(f"convnext-np: note: transformers has no equivalent of the {args.profile!r} "
              "preprocessing, so no preprocessor_config.json was written; preprocess as the "
              f"features were (ImageProcessor(crop_mode={fitted.preprocessor.crop_mode!r}, ...)) "
              "when you use the model", file=sys.stderr)
    return EXIT_INPUT_FAILED if r.unreadable else EXIT_OK


# --- golden, verify -----------------------------------------------------------------------------
def cmd_golden(args) -> int:
    """``convnext-np golden``: 0 written, 1 an image could not be read, 2 no model, no images,
    or an output directory that cannot be written (checked before the model runs)."""
    paths = expand_paths(args.images)
    if not paths:
        return report_no_images()
    try:
        check_output_dir(args.out)
    except ConvNextError as e:
        return _output_error("--out", e)
    model = load_or_report(args)
    if model is None:
        return EXIT_USAGE
    try:
        manifest = golden.write_bundle([str(p) for p in paths], model, args.out, args.float64,
                                       name=str(args.model))
    except ImageError as e:
        print(f"convnext-np: {e}; no bundle written", file=sys.stderr)
        return EXIT_INPUT_FAILED
    out = Path(args.out)
    print(f"{out / golden.TENSORS_FILE}  ({manifest['compute']['dtype']}, {len(paths)} image"
          f"{'s' if len(paths) > 1 else ''}, model {args.model})")
    print(f"{out / golden.MANIFEST_FILE}")
    print(f"  {'tensor':16s} {'shape':>18s} {'dtype':8s} {'min':>10s} {'max':>10s} {'atol':>10s}")
    for key, e in manifest["tensors"].items():
        print(f"  {key:16s} {str(tuple(e['shape'])):>18s} {e['dtype']:8s} {e['min']:10.4f} "
              f"{e['max']:10.4f} {e['tolerance']['atol']:10.2e}")
    return EXIT_OK


def _fmt(values, spec="+.4f") -> str:
    return "[" + ", ".join(f"{v:{spec}}" for v in values) + "]"


def cmd_verify(args, table=published.PUBLISHED) -> int:
    """``convnext-np verify``: 0 PASS, 1 FAIL, 2 no image, no published values or no model."""
    if args.image is None:
        print("convnext-np: error: verify needs --image: the reference image, COCO val2017 "
              f"000000039769, is the transformers repo's {published.COCO_PNG_PATH} (or "
              f"{published.COCO_JPG})", file=sys.stderr)
        return EXIT_USAGE
    name = args.checkpoint or args.model
    rows = published.expectations(name, table)
    if not rows and Path(name).exists():
        rows = published.expectations(published.checkpoint_of_path(name) or "", table)
    if not rows:
        known = sorted({e.checkpoint for e in table})
        print(f"convnext-np: error: no published logits for {name!r}; pass --checkpoint with one "
              f"of: {', '.join(known)}", file=sys.stderr)
        return EXIT_USAGE
    model = load_or_report(args)
    if model is None:
        return EXIT_USAGE
    try:
        for e in rows:
            published.check_head(model, e)
        logits = model(model.preprocessor([args.image])).logits[0]
    except (ConvNextError, ValueError) as e:
        print(f"convnext-np: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    results = [published.compare(logits, e) for e in rows]
    size = load_rgb(args.image).size
    print(f"verify {rows[0].checkpoint} (model {args.model}, backend {model.backend})")
    print(f"image {args.image} ({size[0]}x{size[1]})")
    if size != published.COCO_SIZE:
        print(f"  note: COCO 000000039769 is {published.COCO_SIZE[0]}x{published.COCO_SIZE[1]}; "
              "is this the reference image?")
    verdict_rows = published.judged(rows)
    for r in results:
        e = r.expected
        role = "judged" if e in verdict_rows else "info"
        print(f"\n[{r.verdict}] ({role}) {e.source}")
        print(f"  preprocessing: {e.preprocessing}")
        print(f"  logits[0, :{len(e.logits)}] expected {_fmt(e.logits)}")
        print(f"               got      {_fmt(r.got, '+.6f')}")
        print(f"               diff     {_fmt(r.diff, '+.1e')}")
        print(f"  max |diff| {r.max_abs_diff:.2e}; allowed: atol {e.atol:g} + rtol {e.rtol:g} x |expected|")
        if e.note:
            print(f"  note: {e.note}")
    passed = [r for r in results if r.expected in verdict_rows and r.passed]
    best = min((r for r in results if r.expected in verdict_rows), key=lambda r: r.max_abs_diff)
    if passed:
        print(f"\nverdict: PASS: {rows[0].checkpoint} reproduces the published logits "
              f"(max |diff| {passed[0].max_abs_diff:.2e}, {passed[0].expected.source})")
        return EXIT_OK
    print(f"\nverdict: FAIL: {rows[0].checkpoint} does not reproduce the published logits "
          f"(closest: max |diff| {best.max_abs_diff:.2e} against {best.expected.source})")
    if all(e.kind == "converter" for e in verdict_rows):
        print("  the converter computed its values on the JPEG without centre cropping; they may "
              "not reproduce with any standard preprocessing")
    return EXIT_INPUT_FAILED


# --- the parser -------------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _input_side(text: str) -> int:
    value = int(text)
    if value < MIN_INPUT_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INPUT_SIZE} (ConvNeXt "
                                         f"downsamples by 32), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext-np",
        description="ConvNeXt in NumPy: classify images, extract features, convert weights, "
                    "evaluate accuracy, fit new heads.",
        epilog="exit status: 0 all inputs handled, 1 some input failed, 2 usage error (no "
               "image files found, an output that cannot be written, a model without the head "
               "the command needs) or the model could not be loaded; 141 when stdout's reader "
               "goes away (| head), as Unix tools do. Outputs are checked before any compute.")
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
    p.add_argument("--size", type=_input_side, default=224,
                   help=f"input height, at least {MIN_INPUT_SIZE} (default: 224)")
    p.add_argument("--width", type=_input_side, default=None,
                   help=f"input width, at least {MIN_INPUT_SIZE} (default: = size)")
    p.add_argument("--backend", default="numpy", help=argparse.SUPPRESS)

    def downstream_options(p):
        p.add_argument("dataset", metavar="DATASET",
                       help="a folder of class folders (named by label or WordNet id, as "
                            "ImageNet's val split) or a path,label CSV file")
        p.add_argument("--profile", choices=list(PROFILES), default="model",
                       help="preprocessing: " + "; ".join(f"{k}: {v}" for k, v in PROFILES.items())
                            + " (default: model)")

    p = add("evaluate", "top-1/top-5 accuracy on labelled images",
            "Classify every image of a labelled dataset and report top-k accuracy, per-class "
            "accuracy, the most frequent mistakes and the unreadable images (which are named and "
            "left out of the fractions; exit status 1 when there are any).",
            ["convnext-np evaluate imagenet/val --model convnext-tiny-224",
             "convnext-np evaluate imagenet/val --model convnext-tiny-224 --profile tfhub",
             "convnext-np evaluate labels.csv --model ./my-classifier --format json"], cmd_evaluate)
    downstream_options(p)
    model_options(p)
    p.add_argument("--top-k", "-k", type=_positive, nargs="+", default=[1, 5], metavar="K",
                   help="the k of each top-k accuracy (default: 1 5)")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table",
                   help="output format (default: table)")
    batch_options(p)

    p = add("fit-head", "fit a new linear head on labelled images and save the model",
            "Compute the pooled features of every image once (kept in a cache, so a rerun or an "
            "interrupted run resumes), fit a multinomial logistic-regression head with L2 (L-BFGS) "
            "on the classes named by the dataset's folders or CSV labels, report its accuracy on a "
            "stratified validation split, and save the model in Hugging Face layout.",
            ["convnext-np fit-head flowers/ --model convnext-tiny-224 --out flower-classifier",
             "convnext-np fit-head labels.csv --model ./backbone --out out/ --val-fraction 0.1"],
            cmd_fit_head)
    downstream_options(p)
    model_options(p)
    p.add_argument("--out", "-o", required=True, help="output directory (Hugging Face layout)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of each class held out for validation, in [0, 1) (default: 0.2)")
    p.add_argument("--l2", type=float, default=None,
                   help="weight of the L2 penalty on the mean cross-entropy "
                        "(default: 1/n, scikit-learn's C=1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--cache", default=None,
                   help="feature cache folder (default: convnext_np/features in "
                        "$XDG_CACHE_HOME, else in ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="keep features in memory only")
    batch_options(p)

    p = add("golden", "golden bundle (every stage's output) for checking other ports",
            "Run a model on images and write OUT/tensors.safetensors (pixel_values, "
            "hidden_states.0..4, pooled, logits) and OUT/manifest.json (model source and "
            "sha256, preprocessing, per-tensor shape, dtype, statistics, sha256 and the "
            "tolerance we recommend). docs/porting.md shows how a port checks itself.",
            ["convnext-np golden cat.png --out golden/tiny",
             "convnext-np golden a.jpg b.png --model ./convnext-tiny-224 --out golden/ --float64",
             "convnext-np golden tests/data/images/chelsea.png --model weights/fixtures/hf-safetensors --out /tmp/g"],
            cmd_golden)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (directories are searched)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"hub id, timm name, alias, or a local directory / weights file (default: {DEFAULT_MODEL})")
    p.add_argument("--out", "-o", required=True, help="output directory (created if needed)")
    p.add_argument("--float64", action="store_true",
                   help="run the whole network in float64, a tighter reference (NumPy ops)")
    p.add_argument("--backend", choices=("auto", "numba", "numpy"), default="numpy",
                   help="implementation of the ops for a float32 bundle (default: numpy, the "
                        "reference; a float64 bundle always uses it)")

    p = add("verify", "compare a published checkpoint with its published logits",
            "Run a published checkpoint on the reference image (COCO val2017 "
            "000000039769, 'two cats') and compare logits[0, :3] with the values "
            "transformers publishes: its test suite for facebook/convnext-tiny-224, its "
            "conversion script for the others. Get the image from the transformers repo, "
            f"{published.COCO_PNG_PATH}, or from {published.COCO_JPG}.",
            ["convnext-np verify --image 000000039769.png",
             "convnext-np verify --model facebook/convnext-base-224 --image 000000039769.jpg",
             "convnext-np verify --model ./convnext-tiny-224 --checkpoint facebook/convnext-tiny-224 "
             "--image 000000039769.png"], cmd_verify)
    p.epilog += "\n\nexit status: 0 PASS, 1 FAIL, 2 usage error, no published values, or no model"
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"a published checkpoint: hub id, alias, or its local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--image", "-i", default=None, help="the reference image (000000039769.png or .jpg)")
    p.add_argument("--checkpoint", default=None,
                   help="whose published values to use, when --model is a local directory")
    p.add_argument("--backend", choices=("auto", "numba", "numpy"), default="auto",
                   help="implementation of the ops (default: auto)")
    return parser


class _StderrLog(logging.StreamHandler):
    """The library's log (the Numba compile notice, say) on stderr, as the command's own messages."""

    def emit(self, record):
        self.stream = sys.stderr  # whatever it is now: callers and tests may have replaced it
        super().emit(record)


_LOG_HANDLER = _StderrLog()
_LOG_HANDLER.setFormatter(logging.Formatter("convnext-np: %(message)s"))


def main(argv=None) -> int:
    if _LOG_HANDLER not in logging.getLogger("convnext_np").handlers:
        logging.getLogger("convnext_np").addHandler(_LOG_HANDLER)
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not at interpreter exit
        return code
    except ModelLoadError as e:
        _report_load_error(args, e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as e:  # the output could not be written: /dev/full, a disk that filled up
        _discard_stdout()
        print(f"convnext-np: error: cannot write the output: {e}", file=sys.stderr)
        return EXIT_USAGE


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of what is still buffered does
    not fail again (the Python documentation's advice for SIGPIPE, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
