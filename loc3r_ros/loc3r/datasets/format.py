"""Our on-disk dataset format: scenes of posed RGB-D frames, and situated-QA annotations.

Layout::

    <root>/scenes/<scene_id>/frames/000000.png   RGB (8-bit; .png or .jpg, one kind per scene)
    <root>/scenes/<scene_id>/depth/000000.png    depth, uint16 millimetres, 0 = no depth (optional)
    <root>/scenes/<scene_id>/poses/000000.txt    4x4 camera-to-world, row-major text, metres
    <root>/scenes/<scene_id>/intrinsics.txt      3x3 K of the frames (and of the depth maps)
    <root>/scenes/<scene_id>/scene.json          meta, written last (a scene without it is
                                                 incomplete)
    <root>/annotations/<split>.jsonl             one annotation record per line

Cameras use OpenCV axes (x right, y down, z forward). Frames are numbered 0..N-1 in stream order;
depth maps have the frame size. K uses continuous pixel coordinates with pixel (u, v) covering
[u, u+1) x [v, v+1) (its centre is u + 0.5), as `loc3r.scenes.render` does.

scene.json: {"format_version": 1, "scene_id", "num_frames", "width", "height", "image_ext"
("png" | "jpg"), "has_depth", "depth_scale" (depth units per metre: 1000), "up" (the world's up
axis as a 3-vector, e.g. [0, 0, 1]), "world_frame" (a name, e.g. "synthetic_room",
"scannet_axis_aligned"), optional "room" (the synthetic room, `Room.to_dict()`), optional
"source" (dataset-specific provenance, e.g. ScanNet frame numbers and the axis alignment)}.

Annotation record (a JSON object per line): "scene_id" (str), "situation" (str), "question"
(str), "answers" (non-empty list of str), "question_type" (str), "position" ([x, y, z] metres)
and "yaw" (radians, CCW about +z from +x) of the situated agent in the scene's BEV frame;
optional "quat_xyzw" (agent orientation in the scene's world frame, scalar last),
"world_position" ([x, y, z], world frame), "question_id" (str or int). Any other keys are kept
as they are (`Annotation.extra`).

The BEV frame of a scene is the model's frame (`loc3r.engine.scene_frame.bev_frame`):
gravity-aligned (the scene's "up"), origin at the first frame's camera centre, x = that camera's
heading on the floor, y = left. `SceneData.bev_frame()` builds it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from loc3r.engine.scene_frame import SceneFrame, bev_frame
from loc3r.errors import Loc3rError

FORMAT_VERSION = 1
DEPTH_SCALE = 1000.0  # depth PNG units per metre (millimetres)
IMAGE_EXTS = ("png", "jpg")
_SCENE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SPLIT = _SCENE_ID


class DatasetError(Loc3rError):
    """A dataset file is missing or malformed (the message names the file, and line if any)."""


# --------------------------------------------------------------------------- scenes


@dataclass
class DatasetFrame:
    """One stored frame."""

    index: int
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray | None  # (H, W) uint16 millimetres, 0 = no depth
    pose_c2w: np.ndarray  # (4, 4) float64
    K: np.ndarray  # (3, 3) float64  # noqa: N815

    @property
    def depth(self) -> np.ndarray | None:
        """Depth in metres, float32 (0 where there is no depth)."""
        if self.depth_mm is None:
            return None
        return self.depth_mm.astype(np.float32) / np.float32(DEPTH_SCALE)


@dataclass
class SceneData:
    """A stored scene: meta, intrinsics and poses in memory; images read on access."""

    root: Path  # the scene's folder
    meta: dict
    K: np.ndarray  # noqa: N815
    poses: np.ndarray  # (N, 4, 4) camera-to-world

    @property
    def scene_id(self) -> str:
        """The scene's id."""
        return self.meta["scene_id"]

    @property
    def up(self) -> np.ndarray:
        """The world's up direction."""
        return np.asarray(self.meta["up"], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.poses)

    def __iter__(self) -> Iterator[DatasetFrame]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> DatasetFrame:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range (scene has {len(self)})")
        index %= len(self)
        name = f"{index:06d}"
        size = (self.meta["height"], self.meta["width"])
        rgb = _read_rgb(self.root / "frames" / f"{name}.{self.meta['image_ext']}", size)
        depth = None
        if self.meta["has_depth"]:
            depth = _read_depth(self.root / "depth" / f"{name}.png", size)
        return DatasetFrame(index, rgb, depth, self.poses[index].copy(), self.K.copy())

    def bev_frame(self) -> SceneFrame:
        """The model's BEV frame of this scene (first camera, the scene's up)."""
        return bev_frame(self.poses[0], self.up, "given", f"dataset scene {self.scene_id}")


class SceneWriter:
    """Writes one scene frame by frame (scene.json last, so a partial scene is recognisable).

    depth: float metres (non-finite, <= 0 or beyond 65.535 m -> 0 = no depth) or uint16 mm.
    """

    def __init__(
        self,
        root: str | Path,
        scene_id: str,
        K: np.ndarray,  # noqa: N803
        *,
        up=(0.0, 0.0, 1.0),
        world_frame: str = "world",
        image_ext: str = "png",
        jpeg_quality: int = 95,
        room: dict | None = None,
        source: dict | None = None,
        overwrite: bool = False,
    ):
        if not isinstance(scene_id, str) or not _SCENE_ID.match(scene_id):
            raise DatasetError(f"bad scene id {scene_id!r} (letters, digits, '._-' only)")
        if image_ext not in IMAGE_EXTS:
            raise DatasetError(f"image_ext must be one of {IMAGE_EXTS}, got {image_ext!r}")
        self.K = _check_intrinsics(np.asarray(K, dtype=np.float64), f"intrinsics of {scene_id}")
        up = np.asarray(up, dtype=np.float64)
        if up.shape != (3,) or not np.isfinite(up).all() or np.linalg.norm(up) < 1e-9:
            raise DatasetError(f"bad up vector {up.tolist()} for scene {scene_id}")
        self.dir = Path(root) / "scenes" / scene_id
        if self.dir.exists() and any(self.dir.iterdir()):
            if not overwrite:
                raise DatasetError(f"{self.dir} exists (pass overwrite=True to replace it)")
            shutil.rmtree(self.dir)
        for sub in ("frames", "depth", "poses"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "scene_id": scene_id,
            "num_frames": 0,
            "width": None,
            "height": None,
            "image_ext": image_ext,
            "has_depth": None,
            "depth_scale": DEPTH_SCALE,
            "up": (up / np.linalg.norm(up)).tolist(),
            "world_frame": world_frame,
        }
        if room is not None:
            self.meta["room"] = room
        if source is not None:
            self.meta["source"] = source
        self._jpeg_quality = int(jpeg_quality)
        self._closed = False

    def add(self, rgb: np.ndarray, depth: np.ndarray | None, pose_c2w: np.ndarray) -> int:
        """Append a frame; returns its index."""
        index = self.meta["num_frames"]
        name = f"{index:06d}"
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DatasetError(
                f"frame {index}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}"
            )
        height, width = rgb.shape[:2]
        if self.meta["width"] is None:
            self.meta["width"], self.meta["height"] = width, height
            self.meta["has_depth"] = depth is not None
            if depth is None:
                (self.dir / "depth").rmdir()
        if (width, height) != (self.meta["width"], self.meta["height"]):
            raise DatasetError(
                f"frame {index}: size {width}x{height} differs from the first "
                f"frame's {self.meta['width']}x{self.meta['height']}"
            )
        if (depth is not None) != self.meta["has_depth"]:
            raise DatasetError(f"frame {index}: depth given for some frames only")
        pose = np.asarray(pose_c2w, dtype=np.float64)
        _check_pose(pose, f"frame {index} pose")
        ext = self.meta["image_ext"]
        params = [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality] if ext == "jpg" else []
        _imwrite(
            self.dir / "frames" / f"{name}.{ext}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params
        )
        if depth is not None:
            depth_mm = depth_to_mm(depth)
            if depth_mm.shape != (height, width):
                raise DatasetError(
                    f"frame {index}: depth {depth_mm.shape} differs from the "
                    f"image's {(height, width)}"
                )
            _imwrite(self.dir / "depth" / f"{name}.png", depth_mm, [])
        np.savetxt(self.dir / "poses" / f"{name}.txt", pose, fmt="%.17g")
        self.meta["num_frames"] = index + 1
        return index

    def close(self) -> Path:
        """Write intrinsics and scene.json; returns the scene folder."""
        if self._closed:
            return self.dir
        if self.meta["num_frames"] == 0:
            raise DatasetError(f"scene {self.meta['scene_id']}: no frames written")
        np.savetxt(self.dir / "intrinsics.txt", self.K, fmt="%.17g")
        _write_text_atomic(self.dir / "scene.json", json.dumps(self.meta, indent=1) + "\n")
        self._closed = True
        return self.dir

    def __enter__(self) -> SceneWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Metres (float) -> uint16 mm with 0 for invalid; uint16 input is taken as mm already."""
    depth = np.asarray(depth)
    if depth.dtype == np.uint16:
        return depth
    if not np.issubdtype(depth.dtype, np.floating):
        raise DatasetError(f"depth must be float metres or uint16 mm, got {depth.dtype}")
    mm = np.round(depth.astype(np.float64) * DEPTH_SCALE)
    valid = np.isfinite(mm) & (mm > 0) & (mm <= 65535)
    return np.where(valid, mm, 0).astype(np.uint16)


def write_scene(
    root: str | Path,
    scene_id: str,
    frames: Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    K: np.ndarray,  # noqa: N803
    **options,
) -> Path:
    """Write a scene from (rgb, depth, pose_c2w) tuples; options as for `SceneWriter`."""
    with SceneWriter(root, scene_id, K, **options) as writer:
        for rgb, depth, pose in frames:
            writer.add(rgb, depth, pose)
    return writer.dir


def read_scene(root: str | Path, scene_id: str) -> SceneData:
    """Read a scene's meta, intrinsics and poses (frames are read on access: `scene[i]`)."""
    folder = Path(root) / "scenes" / scene_id
    meta_path = folder / "scene.json"
    if not meta_path.is_file():
        what = "incomplete (no scene.json)" if folder.is_dir() else "missing"
        raise DatasetError(f"scene {scene_id!r} under {root}: {what}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{meta_path}: cannot read: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: not a JSON object")
    for key in ("scene_id", "num_frames", "width", "height", "image_ext", "has_depth", "up"):
        if key not in meta:
            raise DatasetError(f"{meta_path}: missing field {key!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, "
            f"this reader knows {FORMAT_VERSION}"
        )
    if meta["image_ext"] not in IMAGE_EXTS:
        raise DatasetError(f"{meta_path}: image_ext {meta['image_ext']!r} not in {IMAGE_EXTS}")
    if float(meta.get("depth_scale", DEPTH_SCALE)) != DEPTH_SCALE:
        raise DatasetError(f"{meta_path}: depth_scale must be {DEPTH_SCALE}")
    count = meta["num_frames"]
    if not isinstance(count, int) or count < 1:
        raise DatasetError(f"{meta_path}: num_frames must be a positive integer")
    K = _check_intrinsics(_loadtxt(folder / "intrinsics.txt"), str(folder / "intrinsics.txt"))  # noqa: N806
    poses = np.empty((count, 4, 4))
    for i in range(count):
        path = folder / "poses" / f"{i:06d}.txt"
        poses[i] = _check_pose(_loadtxt(path), str(path))
    return SceneData(folder, meta, K, poses)


def list_scenes(root: str | Path) -> list[str]:
    """Ids of the complete scenes under `root` (sorted)."""
    scenes = Path(root) / "scenes"
    if not scenes.is_dir():
        return []
    return sorted(p.name for p in scenes.iterdir() if (p / "scene.json").is_file())


def _loadtxt(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read numbers: {exc}") from exc


def _check_pose(pose: np.ndarray, where: str) -> np.ndarray:
    if pose.shape != (4, 4):
        raise DatasetError(f"{where}: expected a 4x4 matrix, got shape {pose.shape}")
    if not np.isfinite(pose).all():
        raise DatasetError(f"{where}: non-finite values")
    rotation = pose[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or not np.allclose(
        pose[3], [0, 0, 0, 1]
    ):
        raise DatasetError(f"{where}: not a rigid camera-to-world transform")
    return pose


def _check_intrinsics(K: np.ndarray, where: str) -> np.ndarray:  # noqa: N803
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise DatasetError(f"{where}: expected a finite 3x3 matrix, got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise DatasetError(f"{where}: not a pinhole intrinsics matrix")
    return K


def _imwrite(path: Path, image: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), image, params):
        raise DatasetError(f"{path}: cannot write image")


def _read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"{path}: missing or unreadable image")
    if bgr.shape[:2] != tuple(size):
        raise DatasetError(
            f"{path}: size {bgr.shape[1]}x{bgr.shape[0]}, scene says {size[1]}x{size[0]}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_depth(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise DatasetError(f"{path}: missing or unreadable depth image")
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise DatasetError(
            f"{path}: depth must be single-channel uint16, got "
            f"{depth.dtype} with shape {depth.shape}"
        )
    if size is not None and depth.shape != tuple(size):
        raise DatasetError(
            f"{path}: size {depth.shape[1]}x{depth.shape[0]}, expected {size[1]}x{size[0]}"
        )
    return depth


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- annotations

REQUIRED = ("scene_id", "situation", "question", "answers", "question_type", "position", "yaw")
OPTIONAL = ("quat_xyzw", "world_position", "question_id")


@dataclass
class Annotation:
    """One situated question (see the module docstring for the fields)."""

    scene_id: str
    situation: str
    question: str
    answers: list[str]
    question_type: str
    position: tuple[float, float, float]  # BEV, metres
    yaw: float  # BEV, radians
    quat_xyzw: tuple[float, float, float, float] | None = None  # world frame
    world_position: tuple[float, float, float] | None = None
    question_id: str | int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON object of one line (extra keys at the top level)."""
        out: dict[str, Any] = {
            "scene_id": self.scene_id,
            "situation": self.situation,
            "question": self.question,
            "answers": list(self.answers),
            "question_type": self.question_type,
            "position": [float(v) for v in self.position],
            "yaw": float(self.yaw),
        }
        if self.quat_xyzw is not None:
            out["quat_xyzw"] = [float(v) for v in self.quat_xyzw]
        if self.world_position is not None:
            out["world_position"] = [float(v) for v in self.world_position]
        if self.question_id is not None:
            out["question_id"] = self.question_id
        clash = set(self.extra) & (set(REQUIRED) | set(OPTIONAL))
        if clash:
            raise DatasetError(f"extra fields {sorted(clash)} clash with the record's own fields")
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> Annotation:
        """Validate a parsed JSON object; DatasetError names `where` and the problem."""
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
        for key in ("scene_id", "situation", "question", "question_type"):
            if not isinstance(data[key], str):
                raise DatasetError(f"{where}: {key!r} must be a string")
        if not data["scene_id"]:
            raise DatasetError(f"{where}: 'scene_id' is empty")
        answers = data["answers"]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) for a in answers)
        ):
            raise DatasetError(f"{where}: 'answers' must be a non-empty list of strings")
        question_id = data.get("question_id")
        if question_id is not None and (
            isinstance(question_id, bool) or not isinstance(question_id, str | int)
        ):
            raise DatasetError(f"{where}: 'question_id' must be a string or an integer")
        quat = data.get("quat_xyzw")
        world = data.get("world_position")
        return cls(
            scene_id=data["scene_id"],
            situation=data["situation"],
            question=data["question"],
            answers=list(answers),
            question_type=data["question_type"],
            position=tuple(_numbers(data["position"], 3, "position", where)),
            yaw=_numbers([data["yaw"]], 1, "yaw", where)[0],
            quat_xyzw=None if quat is None else tuple(_numbers(quat, 4, "quat_xyzw", where)),
            world_position=None
            if world is None
            else tuple(_numbers(world, 3, "world_position", where)),
            question_id=question_id,
            extra={k: v for k, v in data.items() if k not in REQUIRED and k not in OPTIONAL},
        )


def _numbers(values: Any, count: int, name: str, where: str) -> list[float]:
    if not isinstance(values, list | tuple) or len(values) != count:
        what = "a number" if count == 1 else f"a list of {count} numbers"
        raise DatasetError(f"{where}: {name!r} must be {what}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise DatasetError(f"{where}: {name!r} has a non-number {v!r}")
        if not math.isfinite(v):
            raise DatasetError(f"{where}: {name!r} has a non-finite number {v!r}")
        out.append(float(v))
    if name == "quat_xyzw" and math.hypot(*out) < 1e-9:
        raise DatasetError(f"{where}: 'quat_xyzw' is zero")
    return out


def annotations_path(root: str | Path, split: str) -> Path:
    """`<root>/annotations/<split>.jsonl`."""
    if not isinstance(split, str) or not _SPLIT.match(split):
        raise DatasetError(f"bad split name {split!r} (letters, digits, '._-' only)")
    return Path(root) / "annotations" / f"{split}.jsonl"


def write_annotations(root: str | Path, split: str, records: Iterable[Annotation | dict]) -> Path:
    """Write (replace) a split's annotations; every record is validated first."""
    path = annotations_path(root, split)
    lines = []
    for n, record in enumerate(records):
        if isinstance(record, dict):
            record = Annotation.from_dict(record, f"record {n}")
        data = record.to_dict()
        Annotation.from_dict(data, f"record {n}")  # also checks extra-free fields' values
        try:
            lines.append(json.dumps(data, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"record {n}: not JSON-serialisable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def read_annotations(root: str | Path, split: str) -> list[Annotation]:
    """Read and validate a split's annotations (DatasetError names file:line on any problem)."""
    return read_annotations_file(annotations_path(root, split))


def read_annotations_file(path: str | Path) -> list[Annotation]:
    """Read and validate one annotation .jsonl file (blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            data = json.loads(line, parse_constant=_reject_constant)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise DatasetError(f"{where}: malformed JSON: {exc}") from exc
        records.append(Annotation.from_dict(data, where))
    return records


# --------------------------------------------------------------------------- synthetic export


def export_synthetic(
    root: str | Path,
    seeds: Iterable[int],
    episode_config=None,
    split: str = "train",
    *,
    overwrite: bool = False,
) -> list[str]:
    """Render episodes (`loc3r.scenes.episode.make_episode`) and write them in this format.

    Scenes are named `synthetic_<seed>` (PNG frames, depth in mm, room in scene.json); all
    episodes' questions go to `<root>/annotations/<split>.jsonl`. Returns the scene ids.
    """
    from loc3r.scenes.episode import make_episode  # the renderer is only needed here

    scene_ids, records = [], []
    for seed in seeds:
        episode = make_episode(int(seed), episode_config)
        scene_id = f"synthetic_{int(seed):06d}"
        write_scene(
            root,
            scene_id,
            ((f.rgb, f.depth, f.pose_c2w) for f in episode.frames),
            episode.frames[0].K,
            up=(0.0, 0.0, 1.0),
            world_frame="synthetic_room",
            image_ext="png",
            room=episode.room.to_dict(),
            source={"dataset": "synthetic", "seed": int(seed)},
            overwrite=overwrite,
        )
        for k, record in enumerate(episode.records):
            fields = dict(record.fields)
            world_xy = fields.pop("world_position")
            world_yaw = float(fields.pop("world_yaw"))
            world = np.array([world_xy[0], world_xy[1], 0.0])  # the agent stands on the floor
            records.append(
                Annotation(
                    scene_id=scene_id,
                    situation=record.situation,
                    question=record.question,
                    answers=list(record.answers),
                    question_type=record.question_type,
                    position=tuple(episode.frame.points(world[None])[0].tolist()),
                    yaw=float(record.yaw),
                    quat_xyzw=tuple(Rotation.from_euler("z", world_yaw).as_quat().tolist()),
                    world_position=tuple(world.tolist()),
                    question_id=f"{scene_id}_{k:03d}",
                    extra={"fields": fields} if fields else {},
                )
            )
        scene_ids.append(scene_id)
    write_annotations(root, split, records)
    return scene_ids
