"""Frames from folders and videos, and clear errors for bad sources."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loc3r.errors import InputError
from loc3r.video_io import iter_frames, read_frames


def write_folder(folder, n=5):
    folder.mkdir()
    for i in range(n):
        img = np.full((24, 32, 3), i * 40, np.uint8)
        img[..., 0] = 255  # red in RGB
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_frames_in_order_as_rgb(tmp_path):
    folder = write_folder(tmp_path / "frames")
    (folder / "999.png").write_bytes(b"broken")
    frames = list(iter_frames(folder, fallback_fps=5.0))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2].stamp_ns == 400_000_000 and frames[2].image[0, 0, 0] == 255
    assert frames[2].image[0, 0, 1] == 80
    sampled = read_frames(folder, max_frames=3)
    assert [f.index for f in sampled] == [0, 2, 4]


def test_video_frames_and_rate(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 24))
    assert writer.isOpened()
    for i in range(6):
        writer.write(np.full((24, 32, 3), 30 * i, np.uint8))
    writer.release()
    frames = list(iter_frames(path, stride=2))
    assert [f.index for f in frames] == [0, 2, 4]
    assert frames[1].stamp_ns == 100_000_000  # 2 / 20 fps
    assert frames[0].image.shape == (24, 32, 3)


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "corrupt_video"])
def test_bad_sources_raise_input_error(tmp_path, kind):
    if kind == "missing":
        source, reason = tmp_path / "nope.mp4", "no such video file"
    elif kind == "empty_dir":
        source, reason = tmp_path / "empty", "no images"
        source.mkdir()
    else:
        source, reason = tmp_path / "bad.mp4", "video"
        source.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(InputError, match=reason):
        read_frames(source)
