"""The ``convnext-np`` command line."""

from __future__ import annotations

import argparse
import sys

from .config import VARIANTS, ConvNextConfig
from .errors import ConvNextError
from .summary import stage_rows

EXIT_OK, EXIT_USAGE = 0, 2


def _config_for(model: str) -> ConvNextConfig:
    if model in VARIANTS:
        return ConvNextConfig.from_variant(model)
    from .loading import from_pretrained

    return from_pretrained(model).config


def cmd_info(args) -> int:
    config = _config_for(args.model)
    rows = stage_rows(config, args.size, args.width)
    name = config.variant() or "custom"
    print(f"ConvNeXt {name}: depths {config.depths}, widths {config.hidden_sizes}, "
          f"{config.num_labels} classes, input 3x{args.size}x{args.width or args.size}")
    print(f"{'part':8s} {'output (C, H, W)':>18s} {'params':>12s} {'GMACs':>8s}")
    for r in rows:
        print(f"{r['name']:8s} {str(r['shape']):>18s} {r['params']:>12,d} {r['macs'] / 1e9:>8.3f}")
    total_p, total_m = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    print(f"{'total':8s} {'':>18s} {total_p:>12,d} {total_m / 1e9:>8.3f}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext-np", description="ConvNeXt in NumPy: inspect and run models.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser(
        "info", help="architecture, parameters and MACs per stage",
        description="Print each stage's output shape, parameter count and multiply-accumulates "
                    "(the paper's FLOPs column) for a variant or a weights path.",
        epilog="examples:\n  convnext-np info tiny\n  convnext-np info base --size 384\n"
               "  convnext-np info ./my-checkpoint --size 224 --width 320",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("model", help=f"a variant ({', '.join(VARIANTS)}) or a weights path")
    info.add_argument("--size", type=int, default=224, help="input height (default 224)")
    info.add_argument("--width", type=int, default=None, help="input width (default: = size)")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConvNextError as e:
        print(f"convnext-np: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
