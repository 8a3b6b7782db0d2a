"""Convert CUT3R checkpoints between the official `.pth` format and our safetensors directory.

Usage:
    python -m loc3r.cut3r.convert IN.pth OUT_DIR            # official .pth -> OUT_DIR/
    python -m loc3r.cut3r.convert --to-pth IN_DIR OUT.pth   # our directory -> official .pth

OUT_DIR receives `model.safetensors` (every state_dict tensor, float32 as stored) and `config.json`
(`Cut3rConfig` fields plus the original constructor string, so converting back reproduces it).
The input is loaded strictly into a `Cut3r` model first, so a checkpoint that does not match the
architecture is rejected with the offending keys named. Reading a `.pth` never executes code (see
`loc3r.cut3r.checkpoint`). Tensors are written unchanged: .pth -> dir -> .pth is lossless.
Exit status: 0 on success, 2 on a bad checkpoint or bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loc3r.cut3r.checkpoint import (
    load_official,
    load_state_dict_strict,
    read_pretrained_dir,
    save_official,
    save_pretrained,
)
from loc3r.cut3r.errors import Cut3rError
from loc3r.cut3r.model import Cut3r


def pth_to_dir(pth_path: str | Path, out_dir: str | Path) -> Path:
    """Official `.pth` -> our directory; returns the directory."""
    model, constructor_string = load_official(pth_path)
    return save_pretrained(model, out_dir, constructor_string=constructor_string)


def dir_to_pth(in_dir: str | Path, pth_path: str | Path) -> Path:
    """Our directory -> official `.pth` (args.model = the stored constructor string)."""
    config, tensors, constructor_string = read_pretrained_dir(in_dir)
    model = Cut3r(config)
    load_state_dict_strict(model, tensors)
    save_official(model, pth_path, constructor_string=constructor_string)
    return Path(pth_path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m loc3r.cut3r.convert",
        description="Convert CUT3R checkpoints: official .pth <-> safetensors directory.",
    )
    parser.add_argument("source", help="IN.pth (default) or IN_DIR (with --to-pth)")
    parser.add_argument("target", help="OUT_DIR (default) or OUT.pth (with --to-pth)")
    parser.add_argument(
        "--to-pth", action="store_true", help="convert a safetensors directory back to .pth"
    )
    args = parser.parse_args(argv)
    try:
        if args.to_pth:
            out = dir_to_pth(args.source, args.target)
        else:
            out = pth_to_dir(args.source, args.target)
    except Cut3rError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
