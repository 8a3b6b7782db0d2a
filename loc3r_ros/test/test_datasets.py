"""Dataset formats: our scene/annotation format, ScanNet exports, SQA3D annotations.

The ScanNet and SQA3D fixtures are tiny files written here in the real formats (SensReader's
export_sampled_data layout and SQA3D's v1_balanced_*_scannetv2.json).
"""

from __future__ import annotations

import json
import math
import struct

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from loc3r.datasets import (
    Annotation,
    DatasetError,
    Sqa3dFrame,
    bev_to_world_pose,
    convert_scannet_scene,
    convert_sqa3d,
    export_synthetic,
    read_annotations,
    read_scene,
    world_to_bev_pose,
    write_annotations,
    write_scene,
)
from loc3r.datasets.sqa3d import sqa3d_heading, sqa3d_question_type
from loc3r.errors import Loc3rError
from loc3r.scenes import EpisodeConfig, camera_pose, make_episode


def wrap(angle):
    return math.remainder(angle, 2 * math.pi)


def rz(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# --------------------------------------------------------------------------- our format


def test_scene_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    K = np.array([[20.0, 0, 8.0], [0, 21.0, 6.0], [0, 0, 1]])  # noqa: N806
    rgbs = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(3)]
    depth_mm = [rng.integers(0, 65536, (12, 16), dtype=np.uint16) for _ in range(3)]
    depths = [d.astype(np.float64) / 1000.0 for d in depth_mm]  # metres, whole millimetres
    depths[1][0, 0] = np.nan  # invalid -> 0
    depths[1][0, 1] = -2.0
    depths[1][0, 2] = 70.0  # beyond uint16 mm -> 0
    depth_mm[1][0, :3] = 0
    poses = [camera_pose(rng.normal(size=3), rng.uniform(-3, 3), 0.2, -0.05) for _ in range(3)]
    write_scene(tmp_path, "s0", zip(rgbs, depths, poses, strict=True), K, world_frame="test")

    scene = read_scene(tmp_path, "s0")
    assert len(scene) == 3 and scene.meta["world_frame"] == "test"
    np.testing.assert_array_equal(scene.K, K)
    np.testing.assert_array_equal(scene.poses, np.stack(poses))  # bit-exact text round trip
    for i, frame in enumerate(scene):
        np.testing.assert_array_equal(frame.rgb, rgbs[i])
        assert frame.depth_mm.dtype == np.uint16
        np.testing.assert_array_equal(frame.depth_mm, depth_mm[i])
        np.testing.assert_allclose(frame.depth, depth_mm[i] / 1000.0, rtol=1e-6)
    np.testing.assert_array_equal(scene[-1].rgb, rgbs[2])  # lazy, by index
    with pytest.raises(IndexError):
        scene[3]
    # first camera / z up, as the model sees it
    bev = scene.bev_frame()
    np.testing.assert_allclose(bev.points(poses[0][None, :3, 3]), 0.0, atol=1e-12)

    with pytest.raises(DatasetError, match="exists"):
        write_scene(tmp_path, "s0", [(rgbs[0], None, poses[0])], K)
    write_scene(tmp_path, "s0", [(rgbs[0], None, poses[0])], K, overwrite=True)
    again = read_scene(tmp_path, "s0")
    assert len(again) == 1 and again[0].depth_mm is None


def test_incomplete_or_bad_scenes_raise(tmp_path):
    K = np.eye(3)  # noqa: N806
    with pytest.raises(DatasetError, match="missing"):
        read_scene(tmp_path, "nope")
    with pytest.raises(DatasetError, match="scene id"):
        write_scene(tmp_path, "../x", [], K)
    bad_pose = np.eye(4)
    bad_pose[0, 3] = np.inf
    with pytest.raises(DatasetError, match="non-finite"):
        write_scene(tmp_path, "s1", [(np.zeros((4, 4, 3), np.uint8), None, bad_pose)], K)
    with pytest.raises(DatasetError, match="incomplete"):  # no scene.json was written
        read_scene(tmp_path, "s1")
    assert issubclass(DatasetError, Loc3rError)


def _record(**overrides):
    record = {
        "scene_id": "s0",
        "situation": "I am sitting on the bed.",
        "question": "What is on my left?",
        "answers": ["lamp", "a lamp"],
        "question_type": "what",
        "position": [1.0, -2.5, 0.0],
        "yaw": 0.25,
        "quat_xyzw": [0.0, 0.0, 0.1246747, 0.9921977],
        "question_id": 7,
        "answer_type": "other",
    }
    record.update(overrides)
    return record


def test_annotations_round_trip(tmp_path):
    records = [_record(), _record(question_id="q2", yaw=-3.0, answers=["two"])]
    del records[1]["quat_xyzw"]
    path = write_annotations(tmp_path, "val", records)
    assert path == tmp_path / "annotations" / "val.jsonl"
    back = read_annotations(tmp_path, "val")
    assert [a.to_dict() for a in back] == records
    assert back[0].extra == {"answer_type": "other"} and back[1].quat_xyzw is None
    assert isinstance(back[0], Annotation) and back[0].position == (1.0, -2.5, 0.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"scene_id": "s0", ', "malformed JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in _record().items() if k != "yaw"}), "'yaw'"),
        (json.dumps(_record(position=[1.0, 2.0])), "'position'"),
        (json.dumps(_record())[:-1] + ', "yaw": NaN}', "non-finite"),
        (json.dumps(_record()).replace('"yaw": 0.25', '"yaw": Infinity'), "non-finite"),
        (json.dumps(_record()).replace('"yaw": 0.25', '"yaw": 1e999'), "non-finite"),
        (json.dumps(_record(position=[1.0, "2", 0.0])), "non-number"),
        (json.dumps(_record(answers=[])), "answers"),
        (json.dumps(_record(scene_id=3)), "scene_id"),
    ],
)
def test_malformed_annotation_lines_name_the_line(tmp_path, line, message):
    good = json.dumps(_record())
    path = tmp_path / "annotations" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(DatasetError, match=message) as info:
        read_annotations(tmp_path, "train")
    assert "train.jsonl:3:" in str(info.value)


def test_writing_invalid_annotations_fails(tmp_path):
    with pytest.raises(DatasetError, match="non-finite"):
        write_annotations(tmp_path, "x", [_record(yaw=float("nan"))])
    with pytest.raises(DatasetError, match="clash"):
        write_annotations(tmp_path, "x", [Annotation("s", "", "q", ["a"], "t", (0, 0, 0), 0.0,
                                                     extra={"yaw": 1})])  # fmt: skip
    assert not (tmp_path / "annotations" / "x.jsonl").exists()


def test_export_synthetic_reads_back(tmp_path):
    config = EpisodeConfig(frames=2, image_size=32, situations=1)
    assert export_synthetic(tmp_path, [3], config, "train") == ["synthetic_000003"]
    episode = make_episode(3, config)
    scene = read_scene(tmp_path, "synthetic_000003")
    assert len(scene) == 2
    assert scene.meta["room"] == json.loads(json.dumps(episode.room.to_dict()))
    for frame, expected in zip(scene, episode.frames, strict=True):
        np.testing.assert_array_equal(frame.pose_c2w, expected.pose_c2w)
        np.testing.assert_array_equal(frame.rgb, expected.rgb)
        np.testing.assert_allclose(frame.depth, expected.depth, atol=0.5e-3 + 1e-6)
        np.testing.assert_array_equal(frame.K, expected.K)
    np.testing.assert_allclose(scene.bev_frame().bev_from_world, episode.frame.bev_from_world)
    records = read_annotations(tmp_path, "train")
    assert len(records) == len(episode.records) > 0
    for got, want in zip(records, episode.records, strict=True):
        assert got.scene_id == "synthetic_000003" and got.question == want.question
        assert got.answers == want.answers and got.question_type == want.question_type
        np.testing.assert_allclose(got.position[:2], want.position, atol=1e-9)
        height = episode.frames[0].pose_c2w[2, 3]
        assert got.position[2] == pytest.approx(-height)  # the agent stands on the floor
        assert got.yaw == pytest.approx(want.yaw)
        world_yaw = Rotation.from_quat(got.quat_xyzw).as_euler("ZYX")[0]
        assert wrap(world_yaw - want.fields["world_yaw"]) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- ScanNet fixture

# Axis alignment: a quarter turn about z, then a shift. The raw first camera at (1.5, -0.5, 1.5)
# looking along raw +x becomes, aligned, a camera at (1, 2, 1.5) looking along +y.
ALIGN = np.eye(4)
ALIGN[:3, :3] = rz(math.pi / 2)
ALIGN[:3, 3] = [0.5, 0.5, 0.0]
RAW_POSES = {
    0: camera_pose(np.array([1.5, -0.5, 1.5]), yaw=0.0),
    5: np.full((4, 4), -np.inf),  # lost tracking, as SensReader writes it
    10: camera_pose(np.array([2.0, 0.0, 1.4]), yaw=0.3, pitch=-0.1),
}
MESH_VERTICES = np.array([[0.0, -2.0, 0.0], [2.0, 0.0, 3.0], [1.0, -1.0, 1.0]])  # centre (1,-1,1.5)
K_COLOR = np.array([[58.5, 0, 32.0, 0], [0, 58.5, 24.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
K_DEPTH = np.array([[28.9, 0, 16.0, 0], [0, 28.9, 12.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def _write_ply(path, vertices):
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment tiny\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<3f4B", *v, 200, 100, 50, 255) for v in vertices)
    path.write_bytes(header.encode() + body + struct.pack("<B3i", 3, 0, 1, 2))


@pytest.fixture
def scannet_export(tmp_path):
    scan = tmp_path / "scans" / "scene0000_00"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (scan / sub).mkdir(parents=True)
    for number, pose in RAW_POSES.items():
        colour = np.zeros((48, 64, 3), np.uint8)
        colour[:, :, 1] = 40 + number * 10  # green level tells frames apart (BGR order)
        cv2.imwrite(str(scan / "color" / f"{number}.jpg"), colour)
        depth = np.full((24, 32), 1000 + number, np.uint16)
        depth[0, 0] = 0
        cv2.imwrite(str(scan / "depth" / f"{number}.png"), depth)
        np.savetxt(scan / "pose" / f"{number}.txt", pose, fmt="%f")
    np.savetxt(scan / "intrinsic" / "intrinsic_color.txt", K_COLOR, fmt="%f")
    np.savetxt(scan / "intrinsic" / "intrinsic_depth.txt", K_DEPTH, fmt="%f")
    np.savetxt(scan / "intrinsic" / "extrinsic_color.txt", np.eye(4), fmt="%f")
    (scan / "scene0000_00.txt").write_text(
        "axisAlignment = " + " ".join(f"{v:f}" for v in ALIGN.ravel()) + " \n"
        "colorHeight = 48\ncolorWidth = 64\ndepthHeight = 24\ndepthWidth = 32\n"
        "numColorFrames = 11\nsceneType = Bedroom / Hotel\n"
    )
    _write_ply(scan / "scene0000_00_vh_clean_2.ply", MESH_VERTICES)
    return scan


def test_scannet_conversion(scannet_export, tmp_path):
    out = tmp_path / "ours"
    report = convert_scannet_scene(scannet_export, out, stride=1)
    assert report.scene_id == "scene0000_00" and report.frames_written == 2
    assert report.invalid_poses_skipped == 1 and report.axis_aligned
    np.testing.assert_allclose(report.raw_bbox_center, [1.0, -1.0, 1.5])

    scene = read_scene(out, "scene0000_00")
    source = scene.meta["source"]
    assert source["source_frames"] == [0, 10]  # numeric order; frame 5 skipped
    assert source["invalid_poses_skipped"] == 1 and source["scene_type"] == "Bedroom / Hotel"
    assert scene.meta["world_frame"] == "scannet_axis_aligned"
    assert (scene.meta["width"], scene.meta["height"]) == (32, 24)  # the depth resolution
    np.testing.assert_allclose(scene.K, np.diag([0.5, 0.5, 1.0]) @ K_COLOR[:3, :3])
    for frame, number in zip(scene, [0, 10], strict=True):
        np.testing.assert_allclose(frame.pose_c2w, ALIGN @ RAW_POSES[number], atol=1e-6)
        assert frame.rgb.shape == (24, 32, 3)
        assert abs(int(frame.rgb[..., 1].mean()) - (40 + number * 10)) <= 3
        expected = np.full((24, 32), 1000 + number, np.uint16)
        expected[0, 0] = 0
        np.testing.assert_array_equal(frame.depth_mm, expected)
    # axis alignment applied: the first camera sits at (1, 2, 1.5) and looks along +y
    first = scene.poses[0]
    np.testing.assert_allclose(first[:3, 3], [1.0, 2.0, 1.5], atol=1e-6)
    np.testing.assert_allclose(first[:3, 2], [0.0, 1.0, 0.0], atol=1e-6)

    # stride and an explicit size: every 2nd exported frame (0, 10), colour resized to 16x12
    small = convert_scannet_scene(scannet_export, out, "small", stride=2, image_size=(16, 12))
    assert small.frames_written == 2 and small.invalid_poses_skipped == 0
    scene = read_scene(out, "small")
    assert scene[0].rgb.shape == (12, 16, 3) and scene[0].depth_mm.shape == (12, 16)
    np.testing.assert_allclose(scene.K, np.diag([0.25, 0.25, 1.0]) @ K_COLOR[:3, :3])


def test_scannet_without_alignment_or_valid_poses(scannet_export, tmp_path):
    (scannet_export / "scene0000_00.txt").write_text("sceneType = Office\n")
    report = convert_scannet_scene(scannet_export, tmp_path / "o")
    assert not report.axis_aligned
    scene = read_scene(tmp_path / "o", "scene0000_00")
    assert scene.meta["world_frame"] == "scannet_raw"
    np.testing.assert_allclose(scene.poses[0], RAW_POSES[0], atol=1e-6)
    for number in (0, 10):
        np.savetxt(scannet_export / "pose" / f"{number}.txt", np.full((4, 4), np.inf))
    with pytest.raises(DatasetError, match="no frame with a valid pose"):
        convert_scannet_scene(scannet_export, tmp_path / "o", "other")
    (scannet_export / "scene0000_00.txt").write_text("axisAlignment = 1 0 0\n")
    with pytest.raises(DatasetError, match="axisAlignment"):
        convert_scannet_scene(scannet_export, tmp_path / "o", "third")


# --------------------------------------------------------------------------- SQA3D


def _quat(angle, negate=False):
    q = [0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)]
    return [-v for v in q] if negate else q


def _sqa3d_files(tmp_path, entries):
    """entries: (question_id, scene_id, question, answer, position xyz, quat xyzw)."""
    info = {"description": "This is v1.0 of the SQA3D dataset.", "version": "1.0"}
    questions = {
        "info": info,
        "task_type": "Situated question answering",
        "questions": [
            {"scene_id": scene, "situation": f"I am standing ({qid}).",
             "alternative_situation": ["I just stood up."], "question": question,
             "question_id": qid}
            for qid, scene, question, _, _, _ in entries
        ],
    }  # fmt: skip
    annotations = {
        "info": info,
        "data_type": "scannet",
        "annotations": [
            {"scene_id": scene, "question_type": "N/A", "answer_type": "other",
             "question_id": qid,
             "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
             "rotation": dict(zip(("_x", "_y", "_z", "_w"), quat, strict=True)),
             "position": dict(zip("xyz", position, strict=True))}
            for qid, scene, _, answer, position, quat in reversed(entries)  # joined by id
        ],
    }  # fmt: skip
    q_path = tmp_path / "v1_balanced_questions_test_scannetv2.json"
    a_path = tmp_path / "v1_balanced_sqa_annotations_test_scannetv2.json"
    q_path.write_text(json.dumps(questions))
    a_path.write_text(json.dumps(annotations))
    return q_path, a_path


def _simple_scene(root):
    """A scene whose world is the SQA3D frame, first camera at (1, 2, 1.5) looking along +y."""
    pose = camera_pose(np.array([1.0, 2.0, 1.5]), yaw=math.pi / 2)
    rgb = np.zeros((4, 4, 3), np.uint8)
    source = {"raw_bbox_center": [0.0, 0.0, 0.0], "world_from_raw": np.eye(4).tolist()}
    write_scene(root, "scene0001_00", [(rgb, None, pose)], np.eye(3), source=source)


@pytest.mark.parametrize("offset", [0.0, math.pi])
def test_sqa3d_position_and_yaw_by_hand(tmp_path, offset):
    _simple_scene(tmp_path)
    turn, negated = 2.5, _quat(2.5, negate=True)  # _w < 0: the same rotation
    assert negated[3] < 0
    q_path, a_path = _sqa3d_files(tmp_path, [
        (1, "scene0001_00", "What is in front of me?", "door", (1.0, 4.0, 0.0), _quat(0.0)),
        (2, "scene0001_00", "Is the lamp on?", "yes", (0.0, 2.0, 0.0), negated),
    ])  # fmt: skip
    report = convert_sqa3d(q_path, a_path, tmp_path, "test", heading_offset=offset)
    assert report.written == 2
    first, second = read_annotations(tmp_path, "test")
    # BEV x = world +y (the first camera's heading), y = world -x, origin at the camera
    np.testing.assert_allclose(first.position, [2.0, 0.0, -1.5], atol=1e-12)
    np.testing.assert_allclose(second.position, [0.0, 1.0, -1.5], atol=1e-12)
    rotvec_z = Rotation.from_quat(negated).as_rotvec()[2]
    assert rotvec_z == pytest.approx(turn)
    assert second.yaw == pytest.approx(wrap(rotvec_z + offset - math.pi / 2))
    assert first.yaw == pytest.approx(wrap(offset - math.pi / 2))
    assert second.extra["sqa3d_quat_xyzw"] == negated
    assert second.extra["sqa3d_position"] == [0.0, 2.0, 0.0]
    assert first.question_type == "what" and second.question_type == "is"
    assert first.answers == ["door"] and first.question_id == 1


def test_sqa3d_through_scannet_export(scannet_export, tmp_path):
    out = tmp_path / "ours"
    convert_scannet_scene(scannet_export, out)
    # SQA3D frame = raw ScanNet frame - mesh bbox centre (1, -1, 1.5); the aligned world point
    # (1, 4, 1.5) is raw (3.5, -0.5, 1.5), i.e. SQA3D (2.5, 0.5, 0) -> BEV (2, 0, 0).
    q_path, a_path = _sqa3d_files(tmp_path, [
        (10, "scene0000_00", "How many chairs are behind me?", "two", (2.5, 0.5, 0.0),
         _quat(0.4)),
        (11, "scene0000_00", "Which way is the door?", "left", (-0.3, 0.2, 0.0),
         _quat(-2.9, negate=True)),
        (12, "scene0999_00", "Can I sit down?", "no", (0.0, 0.0, 0.0), _quat(1.0)),
    ])  # fmt: skip
    report = convert_sqa3d(q_path, a_path, out, "test")
    assert report.written == 2 and report.missing_scenes == {"scene0999_00": 1}
    records = read_annotations(out, "test")
    assert [r.question_id for r in records] == [10, 11]
    first = records[0]
    np.testing.assert_allclose(first.position, [2.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(first.world_position, [1.0, 4.0, 1.5], atol=1e-6)
    # heading: +pi/2 from the alignment, -pi/2 from the first camera's heading
    assert first.yaw == pytest.approx(0.4, abs=1e-6)
    assert records[1].yaw == pytest.approx(-2.9, abs=1e-6)
    world_heading = Rotation.from_quat(first.quat_xyzw).as_rotvec()[2]
    assert world_heading == pytest.approx(0.4 + math.pi / 2, abs=1e-6)
    assert first.question_type == "how" and records[1].question_type == "which"

    # the inverse mapping gives back SQA3D's position and rotation
    frame = Sqa3dFrame.from_scene(read_scene(out, "scene0000_00"))
    for record in records:
        position, quat = bev_to_world_pose(record.position, record.yaw, frame)
        np.testing.assert_allclose(position, record.extra["sqa3d_position"], atol=1e-9)
        heading = sqa3d_heading(quat)
        assert wrap(heading - sqa3d_heading(record.extra["sqa3d_quat_xyzw"])) == pytest.approx(
            0.0, abs=1e-9
        )
        position_2d, _ = bev_to_world_pose(record.position[:2], record.yaw, frame)
        np.testing.assert_allclose(position_2d, record.extra["sqa3d_position"], atol=1e-9)


def test_bev_to_world_pose_inverts_for_random_poses(scannet_export, tmp_path):
    convert_scannet_scene(scannet_export, tmp_path)
    frame = Sqa3dFrame.from_scene(read_scene(tmp_path, "scene0000_00"), heading_offset=math.pi)
    rng = np.random.default_rng(1)
    for _ in range(20):
        position, angle = rng.uniform(-4, 4, 3), rng.uniform(-math.pi, math.pi)
        quat = _quat(angle, negate=bool(rng.integers(2)))
        bev, yaw = world_to_bev_pose(position, quat, frame)
        back, back_quat = bev_to_world_pose(bev, yaw, frame)
        np.testing.assert_allclose(back, position, atol=1e-9)
        assert wrap(sqa3d_heading(back_quat) - angle) == pytest.approx(0.0, abs=1e-9)


def test_sqa3d_errors(tmp_path, scannet_export):
    out = tmp_path / "ours"
    convert_scannet_scene(scannet_export, out)
    (scannet_export / "scene0000_00_vh_clean_2.ply").unlink()
    convert_scannet_scene(scannet_export, out, "scene0002_00")  # no mesh: no SQA3D origin
    entries = [
        (1, "scene0000_00", "What?", "a", (0.0, 0.0, 0.0), _quat(0.0)),
        (2, "scene0002_00", "What?", "b", (0.0, 0.0, 0.0), _quat(0.0)),
    ]
    q_path, a_path = _sqa3d_files(tmp_path, entries)
    report = convert_sqa3d(q_path, a_path, out, "test")
    assert report.written == 1 and "raw_bbox_center" in report.unusable_scenes["scene0002_00"]

    data = json.loads(a_path.read_text())
    data["annotations"][0]["position"]["x"] = None
    a_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="question_id 2 position"):
        convert_sqa3d(q_path, a_path, out, "test")
    a_path.write_text('{"annotations": ')
    with pytest.raises(DatasetError, match="cannot read JSON"):
        convert_sqa3d(q_path, a_path, out, "test")
    assert sqa3d_question_type("  Can I sit?") == "can" and sqa3d_question_type("Where") == (
        "others"
    )
