"""Reading camera frames from a video file or a folder of images (CLI, frame player, tests).

Frames come out as (H, W, 3) uint8 RGB with a timestamp in nanoseconds: the video's own clock
(frame index / fps), or `index / fallback_fps` for image folders and videos without a rate.
Every read keeps a `ReadReport`: frames decoded, frames that failed and where, files skipped,
the time span covered. A partial read is a warning (`ReadReport.warnings`); too few frames is an
InputError (`read_frames(min_frames=...)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from loc3r.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
# a video's decoder gives up after this many failed frames in a row (a truncated file's tail)
MAX_CONSECUTIVE_FAILURES = 8
LISTED = 5  # failures and skipped files named in a warning


@dataclass
class FrameRecord:
    """One frame read from a source."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int
    index: int  # position in the source
    name: str  # file name, or "<video>#<index>"


@dataclass
class FrameFailure:
    """A frame the source has but that could not be used."""

    index: int  # position in the source (frame number, or file position in name order)
    name: str
    reason: str


@dataclass
class ReadReport:
    """What a read of a source gave: decoded frames, failures, skipped files, time span."""

    source: str
    kind: str  # "video" or "folder"
    declared: int | None = None  # frames the container declares, or image files in the folder
    decoded: int = 0
    failures: list[FrameFailure] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # not images (folders)
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    stopped_at: int | None = None  # a video whose decoding ended early, at this frame
    notes: list[str] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        """Seconds between the first and the last decoded frame."""
        if self.first_stamp_ns is None or self.last_stamp_ns is None:
            return 0.0
        return (self.last_stamp_ns - self.first_stamp_ns) / 1e9

    @property
    def missing(self) -> int:
        """Declared frames that were neither decoded nor reported failed (a truncated tail)."""
        if self.declared is None:
            return 0
        return max(0, self.declared - self.decoded - len(self.failures))

    @property
    def partial(self) -> bool:
        """Whether some frames of the source could not be used (see FrameReader for the tail)."""
        return bool(self.failures) or self.stopped_at is not None

    def warnings(self) -> list[str]:
        """One sentence per problem; empty for a clean read."""
        out = list(self.notes)
        if self.failures:
            listed = ", ".join(f"{f.name} ({f.reason})" for f in self.failures[:LISTED])
            more = f" and {len(self.failures) - LISTED} more" if len(self.failures) > LISTED else ""
            out.append(f"{len(self.failures)} frame(s) of {self.source} failed: {listed}{more}")
        if self.stopped_at is not None:
            out.append(
                f"decoding of {self.source} stopped at frame {self.stopped_at}: {self.decoded} "
                f"of {self.declared} declared frames decoded (truncated or corrupt file?)"
            )
        if self.skipped_files:
            names = ", ".join(self.skipped_files[:LISTED])
            out.append(
                f"skipped {len(self.skipped_files)} non-image file(s) in the folder: {names}"
            )
        return out

    def to_dict(self) -> dict:
        """The report as JSON-ready values (CLI output, diagnostics)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "frames_declared": self.declared,
            "frames_decoded": self.decoded,
            "frames_failed": len(self.failures),
            "frames_missing": self.missing,
            "failed_at": [f.index for f in self.failures[:100]],
            "span_s": round(self.span_s, 3),
            "warnings": self.warnings(),
        }

    def _stamp(self, stamp_ns: int) -> None:
        if self.first_stamp_ns is None:
            self.first_stamp_ns = stamp_ns
        self.last_stamp_ns = stamp_ns


class FrameReader:
    """Iterate the frames of a folder of images (name order) or a video file; `report` grows.

    Raises InputError for a missing source, an empty folder, or a video that cannot be opened
    or has no decodable frame. Frames that fail (unreadable images, images whose size differs
    from the first frame's, corrupt video frames) are skipped and named in the report.
    """

    def __init__(self, source: str | Path, *, fallback_fps: float = 10.0, stride: int = 1) -> None:
        if stride < 1:
            raise InputError(f"stride must be >= 1, got {stride}")
        if not fallback_fps > 0:
            raise InputError(f"fallback_fps must be positive, got {fallback_fps}")
        self.path = Path(source)
        self.fallback_fps = fallback_fps
        self.stride = stride
        kind = "folder" if self.path.is_dir() else "video"
        self.report = ReadReport(source=str(self.path), kind=kind)

    def __iter__(self) -> Iterator[FrameRecord]:
        self.report = ReadReport(source=str(self.path), kind=self.report.kind)
        if self.path.is_dir():
            yield from self._folder()
        elif self.path.is_file():
            yield from self._video()
        else:
            raise InputError(f"no such video file or image folder: {self.path}")

    def _folder(self) -> Iterator[FrameRecord]:
        report = self.report
        entries = sorted(p for p in self.path.iterdir() if p.is_file())
        files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        report.skipped_files = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not files:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.path}")
        report.declared = len(files)
        period_ns = int(1e9 / self.fallback_fps)
        size = None
        for index, file in enumerate(files):
            if index % self.stride:
                continue
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                report.failures.append(FrameFailure(index, file.name, "unreadable image"))
                continue
            shape = (bgr.shape[1], bgr.shape[0])
            if size is not None and shape != size:
                reason = f"{shape[0]}x{shape[1]}, not the first frame's {size[0]}x{size[1]}"
                report.failures.append(FrameFailure(index, file.name, reason))
                continue
            size = shape
            report.decoded += 1
            report._stamp(index * period_ns)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield FrameRecord(rgb, index * period_ns, index, file.name)
        if self.stride > 1:  # frames between strides are not read, so none of them is missing
            report.declared = len(range(0, len(files), self.stride))

    def _video(self) -> Iterator[FrameRecord]:
        report, path = self.report, self.path
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            report.notes.append(
                f"{path.name}: '{path.suffix}' is not a video file extension; read by content"
            )
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise InputError(f"cannot open video {path} (corrupt, truncated or unsupported format)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        period_ns = int(1e9 / (fps if fps and np.isfinite(fps) and fps > 0 else self.fallback_fps))
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        declared = int(count) if count and np.isfinite(count) and count > 0 else None
        report.declared = declared
        index = failed_grabs = 0  # index: the next frame's position in the video
        try:
            while failed_grabs < MAX_CONSECUTIVE_FAILURES:
                # grab() then retrieve(): a frame that fails to decode is one failed grab, and the
                # next grab() goes on with a following frame (a corrupt frame mid-file)
                ok = capture.grab()
                bgr = capture.retrieve()[1] if ok else None
                if bgr is None or bgr.size == 0:
                    failed_grabs += 1
                    continue
                if failed_grabs:  # frames failed before this one: where its timestamp says
                    at_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                    position = round(at_ms * 1e6 / period_ns) if np.isfinite(at_ms) else -1
                    lost = position - index if position > index else failed_grabs
                    report.failures += [
                        FrameFailure(i, f"{path.name}#{i}", "corrupt")
                        for i in range(index, index + lost)
                    ]
                    index += lost
                    failed_grabs = 0
                report.decoded += 1
                if index % self.stride == 0:
                    report._stamp(index * period_ns)
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield FrameRecord(rgb, index * period_ns, index, f"{path.name}#{index}")
                index += 1
        finally:
            capture.release()
        # the tail did not decode; a container's frame count is often an estimate from its
        # duration, so one frame short (or 0.5 %) is not called a truncated file
        if declared is not None and declared - index > max(1, declared // 200):
            report.stopped_at = index
        if report.decoded == 0:
            raise InputError(f"video {path} has no decodable frame (corrupt or empty)")


def iter_frames(
    source: str | Path, *, fallback_fps: float = 10.0, stride: int = 1
) -> Iterator[FrameRecord]:
    """Yield every `stride`-th frame of a folder of images or a video (see FrameReader)."""
    return iter(FrameReader(source, fallback_fps=fallback_fps, stride=stride))


@dataclass
class Clip:
    """Frames read from a source, and the report of the read."""

    frames: list[FrameRecord]
    report: ReadReport


def read_frames(
    source: str | Path,
    *,
    max_frames: int | None = None,
    min_frames: int = 1,
    fallback_fps: float = 10.0,
) -> Clip:
    """All frames of a source, or `max_frames` of them sampled uniformly over it.

    Fewer than `min_frames` decodable frames is an InputError that says what was read.
    """
    reader = FrameReader(source, fallback_fps=fallback_fps)
    frames = list(reader)
    report = reader.report
    if len(frames) < max(1, min_frames):
        problems = "; ".join(report.warnings())
        raise InputError(
            f"{len(frames)} decodable frame(s) in {source}, the model needs at least "
            f"{max(1, min_frames)}" + (f" ({problems})" if problems else "")
        )
    if max_frames is not None and len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return Clip(frames, report)
