"""Frames from folders and videos, and clear errors for bad sources."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from loc3r.errors import InputError
from loc3r.video_io import FrameReader, iter_frames, read_frames


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
    clip = read_frames(folder, max_frames=3)
    assert [f.index for f in clip.frames] == [0, 2, 4]
    report = clip.report.to_dict()
    assert report["frames_decoded"] == 5 and report["frames_failed"] == 1
    assert report["failed_at"] == [5] and report["span_s"] == 0.4  # 999.png, frames 0..4 at 10 Hz
    assert any("999.png (unreadable image)" in w for w in report["warnings"])
    assert any("notes.txt" in w for w in report["warnings"])  # the non-image file is named


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


def write_video(path, fourcc, n=20, size=(64, 48), fps=10.0):
    """A video of random-noise frames (every frame differs, so none is dropped as a repeat)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), fourcc
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def test_clean_video_reports_every_frame_and_its_span(tmp_path):
    clip = read_frames(write_video(tmp_path / "clean.mp4", "mp4v"), max_frames=8)
    assert len(clip.frames) == 8 and clip.frames[-1].index == 19
    report = clip.report
    assert (report.declared, report.decoded, report.failures, report.missing) == (20, 20, [], 0)
    assert report.span_s == pytest.approx(1.9) and not report.partial and not report.warnings()


@pytest.mark.parametrize(("fourcc", "suffix"), [("mp4v", "mp4"), ("MJPG", "avi")])
def test_corrupt_frames_in_the_middle_are_named_and_skipped(tmp_path, fourcc, suffix):
    data = bytearray(write_video(tmp_path / f"clip.{suffix}", fourcc).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(1).bytes(3000)
    path = tmp_path / f"corrupt.{suffix}"
    path.write_bytes(bytes(data))
    clip = read_frames(path)
    report = clip.report
    assert report.partial and 10 <= report.decoded < 20 and report.warnings()
    assert report.decoded + len(report.failures) + report.missing == 20
    if suffix == "mp4":  # the frames after the damage carry their timestamps: failures are placed
        assert report.failures and all(4 <= f.index <= 15 for f in report.failures)
        assert report.missing == 0 and report.stopped_at is None
        assert any(f"corrupt.mp4#{report.failures[0].index}" in w for w in report.warnings())
        kept = [f.index for f in clip.frames]
        assert kept == sorted(set(kept)) and not set(kept) & {f.index for f in report.failures}
        assert max(kept) == 19  # decoding went on after the damage
    else:  # the AVI demuxer drops the damaged chunk silently: frames are missing, not placed
        assert report.missing == 20 - report.decoded and report.stopped_at == report.decoded


def test_truncated_avi_reports_where_decoding_stopped(tmp_path):
    data = write_video(tmp_path / "clip.avi", "MJPG").read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) // 2])
    clip = read_frames(path)
    report = clip.report
    assert 5 <= report.decoded < 15 and report.stopped_at == report.decoded
    assert report.missing == 20 - report.decoded and report.failures == []
    assert f"stopped at frame {report.decoded}" in " ".join(report.warnings())
    with pytest.raises(InputError, match=f"{report.decoded} decodable frame.*needs at least 16"):
        read_frames(path, min_frames=16)


def test_truncated_mp4_is_a_clear_error(tmp_path):
    data = write_video(tmp_path / "clip.mp4", "mp4v").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # its index (moov) was at the end: nothing to read
    with pytest.raises(InputError, match="cannot open video .*truncated"):
        read_frames(path)


def test_wrong_extension_is_read_by_content_and_said(tmp_path):
    path = tmp_path / "clip.png"
    path.write_bytes(write_video(tmp_path / "clip.avi", "MJPG").read_bytes())
    clip = read_frames(path)
    assert clip.report.decoded == 20 and "read by content" in clip.report.warnings()[0]


def test_folder_of_mixed_sizes_keeps_the_first_frames_size(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, (w, h) in enumerate([(32, 24), (32, 24), (64, 48), (32, 24)]):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((h, w, 3), 50 * i, np.uint8))
    clip = read_frames(folder)
    assert [f.index for f in clip.frames] == [0, 1, 3]
    (failure,) = clip.report.failures
    assert failure.index == 2 and "64x48, not the first frame's 32x24" in failure.reason
    with pytest.raises(InputError, match="3 decodable frame.*at least 4"):
        read_frames(folder, min_frames=4)


def test_reader_report_restarts_with_each_pass(tmp_path):
    reader = FrameReader(write_folder(tmp_path / "frames"))
    assert len(list(reader)) == 5 and len(list(reader)) == 5
    assert reader.report.decoded == 5


@pytest.mark.parametrize("kind", ["zero_length", "random_bytes"])
def test_empty_and_random_files_are_clear_errors(tmp_path, kind):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"" if kind == "zero_length" else os.urandom(100_000))
    with pytest.raises(InputError, match="video"):
        read_frames(path)


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
