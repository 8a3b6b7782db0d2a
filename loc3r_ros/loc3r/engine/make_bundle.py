r"""Build a loc3r model directory (bundle) from checkpoints: by name, hub repo, URL or path.

    # By name, from the lock file (config/models.lock.json): downloads once, pinned, verified
    python -m loc3r.engine.make_bundle --model loc3r-llava-video-7b --out models/loc3r_7b

    # Hub repos and URLs (or local paths); the lock records what was used under --name
    python -m loc3r.engine.make_bundle --out models/loc3r_7b \
        --llava-video lmms-lab/LLaVA-Video-7B-Qwen2 \
        --vision-tower google/siglip-so400m-patch14-384 \
        --cut3r https://example.org/cut3r_512_dpt_4_64.pth --cut3r-sha256 HEX --cut3r-size 512

    # A trained Loc3R-VLM checkpoint (Loc3rVLM.save_pretrained: a folder or a hub repo) + CUT3R
    python -m loc3r.engine.make_bundle --out models/mine --loc3r-vlm runs/x/final \
        --cut3r ~/ckpt/cut3r_512_dpt_4_64.pth

A hub value is `org/name[@revision]` (`org/name/file.pth[@revision]` for a CUT3R checkpoint in
a repo); see loc3r.engine.model_fetch for the cache, offline use and verification. The bundle is
written to a temporary folder beside --out and renamed at the end, so a failure leaves no
half-written bundle. Then run the node with `model_dir:=models/...` (or `model:=NAME`) and
`device:=cuda`. New heads built from a bare LLaVA-Video are random: localization from such a
bundle is meaningless until it is trained.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from loc3r.engine.model_fetch import (
    FetchError,
    Source,
    fetch,
    loc3r_cache_dir,
    parse_source,
    read_lock,
    remove_tree,
    write_lock,
)
from loc3r.errors import Loc3rError

PARTS = ("llava_video", "vision_tower", "loc3r_vlm", "cut3r")


def assemble(
    out: Path,
    cut3r_path: Path,
    *,
    llava_video: Path | None = None,
    vision_tower: Path | None = None,
    loc3r_vlm: Path | None = None,
    cut3r_size: int = 512,
    frames: int = 32,
    description: str = "",
) -> Path:
    """Load the checkpoints and write the bundle to `out` (through a temporary folder)."""
    from loc3r.cut3r import load_cut3r
    from loc3r.engine.models import save_bundle
    from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig

    cut3r = load_cut3r(cut3r_path)
    if llava_video is not None:
        if vision_tower is None:
            raise ValueError("--llava-video needs --vision-tower")
        config = Loc3rVLMConfig(cam_token_dim=cut3r.config.dec_embed_dim)
        vlm = Loc3rVLM.from_base(llava_video, vision_tower, config, dtype=torch.float32)
    elif loc3r_vlm is not None:
        vlm = Loc3rVLM.from_pretrained(loc3r_vlm)
    else:
        raise ValueError("give --llava-video (with --vision-tower) or --loc3r-vlm")
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    remove_tree(temporary)
    try:
        save_bundle(temporary, vlm, cut3r, cut3r_image_size=cut3r_size,
                    num_query_frames=frames, description=description)  # fmt: skip
        if out.exists():
            remove_tree(out)
        os.replace(temporary, out)
    finally:
        remove_tree(temporary)
    return out


def bundle_dir_for(name: str) -> Path:
    """Where `--model NAME` (and the node's `model` parameter) builds its bundle by default."""
    return loc3r_cache_dir() / "bundles" / name


def build_named(name: str, lock_path: str | Path | None = None, out: Path | None = None) -> Path:
    """The bundle of a model named in the lock file: built on first use, then reused."""
    lock = read_lock(lock_path)
    entry = lock["models"].get(name)
    if entry is None:
        known = ", ".join(sorted(lock["models"])) or "none"
        raise FetchError(f"no model named {name!r} in the lock file (known: {known})")
    out = out or bundle_dir_for(name)
    if (out / "bundle.json").exists():
        return out
    command = f"python -m loc3r.engine.make_bundle --model {name}"
    sources = {p: Source.from_lock(entry[p]) for p in PARTS if entry.get(p)}
    paths = {p: fetch(s, p, command) for p, s in sources.items()}
    for part, source in sources.items():  # pin what was resolved or first seen
        entry[part] = source.to_lock()
    write_lock(lock, lock_path)
    return assemble(
        out,
        paths["cut3r"],
        llava_video=paths.get("llava_video"),
        vision_tower=paths.get("vision_tower"),
        loc3r_vlm=paths.get("loc3r_vlm"),
        cut3r_size=int(entry.get("cut3r_size", 512)),
        frames=int(entry.get("frames", 32)),
        description=entry.get("description", name),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, fetch, load, write the bundle."""
    parser = argparse.ArgumentParser(
        prog="python -m loc3r.engine.make_bundle",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--out", help="bundle folder (with --model: default ~/.cache/loc3r)")
    parser.add_argument("--model", help="a model name from the lock file")
    parser.add_argument("--lock", help="lock file (default: config/models.lock.json)")
    parser.add_argument("--name", help="record the sources under this name in the lock file")
    parser.add_argument("--cut3r", help="official .pth or our CUT3R folder: path, hub or URL")
    parser.add_argument("--cut3r-sha256", help="expected sha256 of a --cut3r URL")
    parser.add_argument("--cut3r-size", type=int, default=512, help="512 (DPT) or 224 (linear)")
    parser.add_argument("--frames", type=int, default=32, help="frames per query")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--llava-video", help="lmms-lab LLaVA-Video: path or hub repo")
    source.add_argument("--loc3r-vlm", help="a trained Loc3R-VLM: path or hub repo")
    parser.add_argument("--vision-tower", help="SigLIP config for --llava-video: path or hub")
    args = parser.parse_args(argv)
    try:
        if args.model:
            out = build_named(args.model, args.lock, Path(args.out) if args.out else None)
        else:
            out = _build_from_arguments(parser, args)
    except (Loc3rError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _build_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    if not args.out or not args.cut3r or not (args.llava_video or args.loc3r_vlm):
        parser.error("give --model NAME, or --out, --cut3r and --llava-video or --loc3r-vlm")
    sources = {"cut3r": parse_source(args.cut3r, single_file=True)}
    if args.cut3r_sha256:
        sources["cut3r"].sha256 = args.cut3r_sha256.lower()
    for part in ("llava_video", "vision_tower", "loc3r_vlm"):
        if getattr(args, part):
            sources[part] = parse_source(getattr(args, part))
    command = "python -m loc3r.engine.make_bundle " + " ".join(sys.argv[1:])
    paths = {p: fetch(s, p, command) for p, s in sources.items()}
    described = ", ".join(f"{p} {s.location}" for p, s in sources.items())
    out = assemble(
        Path(args.out),
        paths["cut3r"],
        llava_video=paths.get("llava_video"),
        vision_tower=paths.get("vision_tower"),
        loc3r_vlm=paths.get("loc3r_vlm"),
        cut3r_size=args.cut3r_size,
        frames=args.frames,
        description=described + ("; untrained Loc3R heads" if args.llava_video else ""),
    )
    if args.name:
        lock = read_lock(args.lock)
        entry = {p: s.to_lock() for p, s in sources.items()}
        entry |= {"cut3r_size": args.cut3r_size, "frames": args.frames, "description": described}
        lock["models"][args.name] = entry
        write_lock(lock, args.lock)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
