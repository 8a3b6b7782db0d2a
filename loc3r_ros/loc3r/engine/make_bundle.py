r"""Build a loc3r model directory (bundle) from checkpoints you downloaded.

    # A Loc3R-VLM to fine-tune: LLaVA-Video-7B-Qwen2 + SigLIP config + official CUT3R
    python -m loc3r.engine.make_bundle --out models/loc3r_7b \
        --llava-video ~/ckpt/LLaVA-Video-7B-Qwen2 --vision-tower ~/ckpt/siglip-so400m-patch14-384 \
        --cut3r ~/ckpt/cut3r_512_dpt_4_64.pth --cut3r-size 512

    # A trained Loc3R-VLM checkpoint (Loc3rVLM.save_pretrained) + CUT3R
    python -m loc3r.engine.make_bundle --out models/mine --loc3r-vlm runs/x/final \
        --cut3r ~/ckpt/cut3r_512_dpt_4_64.pth

Then run the node with `model_dir:=models/...` (and `device:=cuda`). New heads built from a bare
LLaVA-Video are random: localization from such a bundle is meaningless until it is trained.
"""

from __future__ import annotations

import argparse
import sys

import torch

from loc3r.cut3r import load_cut3r
from loc3r.engine.models import save_bundle
from loc3r.errors import Loc3rError
from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load, write the bundle."""
    parser = argparse.ArgumentParser(prog="python -m loc3r.engine.make_bundle", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cut3r", required=True, help="official .pth or our CUT3R directory")
    parser.add_argument("--cut3r-size", type=int, default=512, help="512 (DPT) or 224 (linear)")
    parser.add_argument("--frames", type=int, default=32, help="frames per query")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--llava-video", help="lmms-lab LLaVA-Video directory")
    source.add_argument("--loc3r-vlm", help="a trained Loc3R-VLM directory")
    parser.add_argument("--vision-tower", help="SigLIP directory (config.json) for --llava-video")
    args = parser.parse_args(argv)
    try:
        cut3r = load_cut3r(args.cut3r)
        if args.llava_video:
            if not args.vision_tower:
                parser.error("--llava-video needs --vision-tower")
            config = Loc3rVLMConfig(cam_token_dim=cut3r.config.dec_embed_dim)
            vlm = Loc3rVLM.from_base(
                args.llava_video, args.vision_tower, config, dtype=torch.float32
            )
            description = f"LLaVA-Video {args.llava_video} + untrained Loc3R heads"
        else:
            vlm = Loc3rVLM.from_pretrained(args.loc3r_vlm)
            description = f"Loc3R-VLM {args.loc3r_vlm}"
        out = save_bundle(
            args.out,
            vlm,
            cut3r,
            cut3r_image_size=args.cut3r_size,
            num_query_frames=args.frames,
            description=f"{description}; CUT3R {args.cut3r}",
        )
    except (Loc3rError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
