"""SQA3D situated-QA annotations -> our annotation format, and BEV predictions -> SQA3D poses.

SQA3D ships per split `v1_balanced_questions_<split>_scannetv2.json` ({"questions": [{
"question_id", "scene_id", "situation", "alternative_situation", "question"}]}) and
`v1_balanced_sqa_annotations_<split>_scannetv2.json` ({"annotations": [{"question_id",
"scene_id", "answers": [{"answer"}], "position": {"x", "y", "z"}, "rotation": {"_x", "_y", "_z",
"_w"}, "answer_type", "question_type"}]}), joined here by question_id.

SQA3D frame. Situation positions are NOT in ScanNet's axis-aligned frame: SQA3D's own loader
(ScanQA/lib/sepdataset.py) adds `bs_center`, the centre of the vertex bounding box of the raw
`<scene>_vh_clean_2.ply`, to get the raw ScanNet frame, then applies axisAlignment to both the
position and the rotation; its visualiser (utils/visualize_data.py) likewise centres the raw
mesh. So: p_raw = p_sqa3d + raw_bbox_center, R_raw = R(quat), and our scene world =
world_from_raw @ raw (scene.json "source": "raw_bbox_center", "world_from_raw", as written by
`loc3r.datasets.scannet.convert_scannet_scene` when the mesh is present).

Heading. The quaternion is scalar-last by key name (_x, _y, _z, _w); the agent heading is
`Rotation.from_quat([x, y, z, w]).as_rotvec()[2]` (+ `heading_offset`), the convention of the
SQA3D localisation metric (for the pure z rotations of SQA3D it is the yaw, in [-pi, pi]).
SQA3D's visualiser draws the agent's arrow along the body's -x axis; if the facing direction
is meant, heading_offset = pi. The metric compares headings, so it is indifferent to the
offset, but BEV yaws shared with other data (the synthetic episodes face along +x) are not.

BEV. Positions and yaws are mapped into the BEV frame of the converted scene (first frame's
camera, up = +z: `SceneData.bev_frame`), yaw_bev = heading - heading0 where heading0 is the
heading of the BEV x axis in the SQA3D frame. `bev_to_world_pose` is the inverse, giving
SQA3D-frame position and quaternion for evaluating predictions against SQA3D ground truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from loc3r.datasets.format import (
    Annotation,
    DatasetError,
    SceneData,
    read_scene,
    write_annotations,
)
from loc3r.engine.scene_frame import SceneFrame

SQA3D_HEADING_OFFSET = 0.0  # heading = rotvec z of the quaternion + this (see module docstring)
QUESTION_TYPES = ("what", "is", "how", "can", "which")  # SQA3D's breakdown; else "others"


def sqa3d_question_type(question: str) -> str:
    """SQA3D's question category: the first word (what/is/how/can/which) or "others"."""
    words = question.strip().split(maxsplit=1)
    first = words[0].lower().strip(",.?!") if words else ""
    return first if first in QUESTION_TYPES else "others"


@dataclass
class Sqa3dFrame:
    """The SQA3D frame of one scene relative to its BEV frame."""

    bev: SceneFrame
    world_from_raw: np.ndarray  # (4, 4) scene world <- raw ScanNet frame
    raw_center: np.ndarray  # (3,) raw mesh bounding-box centre (SQA3D origin in the raw frame)
    heading_offset: float = SQA3D_HEADING_OFFSET

    @classmethod
    def from_scene(
        cls, scene: SceneData, heading_offset: float = SQA3D_HEADING_OFFSET
    ) -> Sqa3dFrame:
        """From a converted scene (needs "source": "raw_bbox_center" in its scene.json)."""
        source = scene.meta.get("source") or {}
        center = source.get("raw_bbox_center")
        if center is None:
            raise DatasetError(
                f"scene {scene.scene_id}: no raw_bbox_center in scene.json (convert it with "
                f"its <scene>_vh_clean_2.ply present)"
            )
        world_from_raw = np.asarray(source.get("world_from_raw", np.eye(4)), dtype=np.float64)
        if world_from_raw.shape != (4, 4) or not np.isfinite(world_from_raw).all():
            raise DatasetError(f"scene {scene.scene_id}: bad world_from_raw in scene.json")
        if not np.allclose(scene.up, [0.0, 0.0, 1.0], atol=1e-6):
            raise DatasetError(f"scene {scene.scene_id}: SQA3D needs a z-up scene")
        frame = cls(scene.bev_frame(), world_from_raw, np.asarray(center, float), heading_offset)
        if abs(frame.bev_from_sqa3d[2, 2] - 1.0) > 1e-6:
            raise DatasetError(f"scene {scene.scene_id}: world_from_raw tilts the z axis")
        return frame

    @property
    def world_from_sqa3d(self) -> np.ndarray:
        """(4, 4) scene world <- SQA3D frame."""
        shift = np.eye(4)
        shift[:3, 3] = self.raw_center
        return self.world_from_raw @ shift

    @property
    def bev_from_sqa3d(self) -> np.ndarray:
        """(4, 4) BEV <- SQA3D frame."""
        return self.bev.bev_from_world @ self.world_from_sqa3d

    @property
    def heading0(self) -> float:
        """Heading of the BEV x axis in the SQA3D frame (radians)."""
        rotation = self.bev_from_sqa3d
        return math.atan2(rotation[0, 1], rotation[0, 0])


def sqa3d_heading(quat_xyzw, heading_offset: float = SQA3D_HEADING_OFFSET) -> float:
    """The metric's heading of an SQA3D quaternion (scalar last), wrapped to [-pi, pi]."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    if quat.shape != (4,) or not np.isfinite(quat).all() or np.linalg.norm(quat) < 1e-9:
        raise DatasetError(f"bad quaternion {quat.tolist()}")
    heading = Rotation.from_quat(quat).as_rotvec()[2] + heading_offset
    return math.remainder(heading, 2 * math.pi)


def world_to_bev_pose(position, quat_xyzw, frame: Sqa3dFrame) -> tuple[np.ndarray, float]:
    """SQA3D position (x, y, z) and quaternion -> BEV position (3,) and BEV yaw."""
    position = np.asarray(position, dtype=np.float64)
    bev = frame.bev_from_sqa3d @ np.append(position, 1.0)
    yaw = math.remainder(
        sqa3d_heading(quat_xyzw, frame.heading_offset) - frame.heading0, 2 * math.pi
    )
    return bev[:3], yaw


def bev_to_world_pose(
    position_bev, yaw_bev: float, frame: Sqa3dFrame
) -> tuple[np.ndarray, np.ndarray]:
    """BEV position ((x, y) or (x, y, z)) and yaw -> SQA3D position (3,) and quat_xyzw (4,).

    With a 2-D BEV position the SQA3D z is 0 (as in SQA3D's annotations). The quaternion is a
    rotation about z whose `sqa3d_heading` is the BEV yaw's heading.
    """
    position_bev = np.asarray(position_bev, dtype=np.float64)
    sqa3d_from_bev = np.linalg.inv(frame.bev_from_sqa3d)
    if position_bev.shape == (2,):
        # the SQA3D z of BEV (x, y, t) is linear in t: pick t so that it is 0
        at0 = sqa3d_from_bev @ np.array([*position_bev, 0.0, 1.0])
        t = -at0[2] / sqa3d_from_bev[2, 2]
        position_bev = np.array([*position_bev, t])
    elif position_bev.shape != (3,):
        raise ValueError(f"position_bev must have 2 or 3 values, got shape {position_bev.shape}")
    position = (sqa3d_from_bev @ np.append(position_bev, 1.0))[:3]
    angle = yaw_bev + frame.heading0 - frame.heading_offset
    quat = Rotation.from_rotvec([0.0, 0.0, math.remainder(angle, 2 * math.pi)]).as_quat()
    return position, quat


def sqa3d_pose_dict(position, quat_xyzw) -> dict:
    """SQA3D's JSON form: {"position": {"x", "y", "z"}, "rotation": {"_x", "_y", "_z", "_w"}}."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quat_xyzw)
    return {
        "position": {"x": x, "y": y, "z": z},
        "rotation": {"_x": qx, "_y": qy, "_z": qz, "_w": qw},
    }


@dataclass
class Sqa3dReport:
    """What a conversion did."""

    path: Path
    written: int = 0
    unmatched_questions: int = 0  # questions without an annotation
    missing_scenes: dict[str, int] = field(default_factory=dict)  # scene -> questions skipped
    unusable_scenes: dict[str, str] = field(default_factory=dict)  # scene -> why (no centre..)


def _load(path: str | Path, key: str) -> list[dict]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DatasetError(f"{path}: expected an object with a {key!r} list")
    for n, item in enumerate(data[key]):
        if not isinstance(item, dict) or "question_id" not in item or "scene_id" not in item:
            raise DatasetError(f"{path}: {key}[{n}] lacks question_id/scene_id")
    return data[key]


def _vector(obj: Any, keys: tuple[str, ...], where: str) -> list[float]:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise DatasetError(f"{where}: expected an object with {', '.join(keys)}")
    values = []
    for k in keys:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DatasetError(f"{where}: {k} = {v!r} is not a finite number")
        values.append(float(v))
    return values


def convert_sqa3d(
    questions_json: str | Path,
    annotations_json: str | Path,
    dst_root: str | Path,
    split: str,
    *,
    heading_offset: float = SQA3D_HEADING_OFFSET,
) -> Sqa3dReport:
    """Join SQA3D questions and annotations into `<dst_root>/annotations/<split>.jsonl`.

    The scenes must already be converted under dst_root (`convert_scannet_scene`); questions of
    missing or unusable scenes are skipped and counted in the report.
    """
    questions = _load(questions_json, "questions")
    annotations = _load(annotations_json, "annotations")
    by_id: dict[Any, dict] = {}
    for item in annotations:
        if item["question_id"] in by_id:
            raise DatasetError(f"{annotations_json}: duplicate question_id {item['question_id']}")
        by_id[item["question_id"]] = item

    report = Sqa3dReport(path=Path(dst_root))
    frames: dict[str, Sqa3dFrame | None] = {}
    records = []
    for question in questions:
        qid, scene_id = question["question_id"], question["scene_id"]
        where = f"{questions_json} question_id {qid}"
        annotation = by_id.get(qid)
        if annotation is None:
            report.unmatched_questions += 1
            continue
        if annotation["scene_id"] != scene_id:
            raise DatasetError(
                f"{where}: scene {scene_id} but its annotation says {annotation['scene_id']}"
            )
        for key in ("situation", "question"):
            if not isinstance(question.get(key), str):
                raise DatasetError(f"{where}: {key!r} must be a string")
        answers = annotation.get("answers")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
        ):
            raise DatasetError(f"{where}: 'answers' must be a non-empty list of {{'answer': str}}")
        position = _vector(annotation.get("position"), ("x", "y", "z"), f"{where} position")
        quat = _vector(annotation.get("rotation"), ("_x", "_y", "_z", "_w"), f"{where} rotation")
        if np.linalg.norm(quat) < 1e-9:
            raise DatasetError(f"{where}: zero rotation quaternion")

        if scene_id not in frames:
            frames[scene_id] = None
            try:
                scene = read_scene(dst_root, scene_id)
            except DatasetError:
                scene = None
            if scene is not None:
                try:
                    frames[scene_id] = Sqa3dFrame.from_scene(scene, heading_offset)
                except DatasetError as exc:
                    report.unusable_scenes[scene_id] = str(exc)
        frame = frames[scene_id]
        if frame is None:
            if scene_id not in report.unusable_scenes:
                report.missing_scenes[scene_id] = report.missing_scenes.get(scene_id, 0) + 1
            continue

        bev_position, yaw = world_to_bev_pose(position, quat, frame)
        world_from_sqa3d = frame.world_from_sqa3d
        world_position = (world_from_sqa3d @ np.append(position, 1.0))[:3]
        world_rotation = world_from_sqa3d[:3, :3] @ Rotation.from_quat(quat).as_matrix()
        extra = {
            "answer_type": annotation.get("answer_type"),
            "sqa3d_question_type": annotation.get("question_type"),
            "alternative_situation": question.get("alternative_situation", []),
            "sqa3d_position": position,
            "sqa3d_quat_xyzw": quat,
        }
        records.append(
            Annotation(
                scene_id=scene_id,
                situation=question["situation"],
                question=question["question"],
                answers=[a["answer"] for a in answers],
                question_type=sqa3d_question_type(question["question"]),
                position=tuple(bev_position.tolist()),
                yaw=yaw,
                quat_xyzw=tuple(Rotation.from_matrix(world_rotation).as_quat().tolist()),
                world_position=tuple(world_position.tolist()),
                question_id=qid,
                extra=extra,
            )
        )
    report.path = write_annotations(dst_root, split, records)
    report.written = len(records)
    return report
