"""Procedural scenes: determinism, depth and poses by reprojection, answers checked by geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loc3r.scenes import (
    EpisodeConfig,
    bev_targets,
    camera_pose,
    generate_room,
    intrinsics,
    make_episode,
    object_cover,
    relative_direction,
    render,
)
from loc3r.scenes.render import cast_rays
from loc3r.scenes.situations import NEXT_TO_REACH
from loc3r.scenes.textures import _hash, value_noise
from loc3r.scenes.world import (
    SceneObject,
    _overlaps,
    distance_to_footprint,
    floor_points_near,
    free_floor_points,
)

CONFIG = EpisodeConfig(frames=6, image_size=64, situations=3)


def test_episodes_are_deterministic():
    a, b = make_episode(11, CONFIG), make_episode(11, CONFIG)
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a.frames, b.frames, strict=True))
    assert [r.to_dict() for r in a.records] == [r.to_dict() for r in b.records]
    assert not np.array_equal(a.frames[0].rgb, make_episode(12, CONFIG).frames[0].rgb)


@pytest.mark.parametrize("seed", range(6))
def test_objects_do_not_overlap_and_stay_inside(seed):
    room = generate_room(seed)
    floor = [o for o in room.objects if o.kind not in ("window", "door", "tv")]
    for i, a in enumerate(floor):
        corners = a.footprint()
        assert (corners >= -1e-6).all() and (corners[:, 0] <= room.width + 1e-6).all()
        for b in floor[i + 1 :]:
            assert not _overlaps(corners, b.footprint(), 0.0), (a.label, b.label)


def test_depth_matches_a_known_plane():
    room = generate_room(0)
    room.objects.clear()
    K = intrinsics(32)  # noqa: N806
    pose = camera_pose(np.array([1.0, 1.0, 1.0]), yaw=0.0, pitch=0.0)  # facing the +x wall
    frame = render(room, pose, K, (32, 32))
    # The optical axis hits the wall x = width head-on: z-depth = width - 1 everywhere on it.
    centre = frame.depth[16, 16]
    assert centre == pytest.approx(room.width - 1.0, abs=1e-5)


def _backproject(frame, v, u):
    z = float(frame.depth[v, u])
    K = frame.K  # noqa: N806
    cam = np.array([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z])
    return frame.pose_c2w[:3, :3] @ cam + frame.pose_c2w[:3, 3]


def test_points_from_two_views_agree_within_a_millimetre():
    """A pixel of view A, back-projected with its depth and pose, is hit by view B's ray to it."""
    episode = make_episode(3, EpisodeConfig(frames=6, image_size=96))
    a, b = episode.frames[0], episode.frames[2]
    room, origin_b = episode.room, b.pose_c2w[:3, 3]
    checked = 0
    for v in range(3, 96, 7):
        for u in range(3, 96, 7):
            p = _backproject(a, v, u)
            direction = p - origin_b
            distance = np.linalg.norm(direction)
            t, *_ = cast_rays(room, origin_b, (direction / distance)[None])
            if t[0] < distance - 0.01:
                continue  # occluded from B
            assert abs(t[0] - distance) < 1e-3
            checked += 1
    assert checked > 50


def _first_box_hit(room, origin, direction):
    """Reference for one ray: the nearest object hit by a plain slab test (distance, object id)."""
    best, best_id = math.inf, -1
    for obj in room.objects:
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        to_local = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
        o, d = to_local @ (origin - np.array(obj.centre)), to_local @ direction
        near, far = -math.inf, math.inf
        for k in range(3):
            half = obj.size[k] / 2
            if d[k] == 0:
                if abs(o[k]) > half:
                    near, far = math.inf, -math.inf
                continue
            t1, t2 = sorted(((-half - o[k]) / d[k], (half - o[k]) / d[k]))
            near, far = max(near, t1), min(far, t2)
        if near <= far and 1e-6 < near < best:
            best, best_id = near, obj.id
    return best, best_id


def test_ray_culling_keeps_every_object_hit():
    """cast_rays tests only rays near each box; a slab test of every ray finds the same hits."""
    rng = np.random.default_rng(4)
    checked = hits = 0
    for seed in range(6):
        room = generate_room(seed)
        for obj in room.objects[:3]:  # cameras far from and inside objects' bounding spheres
            for origin in (
                np.array([room.width, room.depth, room.height]) * rng.uniform(0.1, 0.9, 3),
                np.array(obj.centre) + rng.normal(scale=0.2, size=3),
            ):
                d = rng.normal(size=(300, 3)) * rng.uniform(0.2, 3.0, (300, 1))  # any length
                d[:5] = [[1, 0, 0], [0, 1, 0], [0, 0, -1], [1, 1, 0], [0, -1, 1]]  # axis-aligned
                t, _, _, surface, object_id = cast_rays(room, origin, d)
                for k in range(len(d)):
                    best, best_id = _first_box_hit(room, origin, d[k])
                    if best_id >= 0 and best <= t[k] + 1e-9:  # a box before the room surface
                        assert object_id[k] == best_id and surface[k] == 2
                        assert t[k] == pytest.approx(best, abs=1e-9)
                        hits += 1
                    else:
                        assert object_id[k] == -1 and surface[k] < 2
                    checked += 1
    assert checked == 6 * 3 * 2 * 300 and hits > 500


def test_value_noise_is_the_smooth_blend_of_its_lattice_hashes():
    """value_noise shares its corners' products; it equals the blend of four `_hash` calls, and
    both keep the values that rendered every room so far (rooms stay the same across versions)."""
    rng = np.random.default_rng(2)
    u, v = rng.uniform(-40, 40, 5000), rng.uniform(-40, 40, 5000)
    i, j = np.floor(u), np.floor(v)
    su, sv = (u - i) ** 2 * (3 - 2 * (u - i)), (v - j) ** 2 * (3 - 2 * (v - j))
    a, b = _hash(i, j, 9), _hash(i + 1, j, 9)
    c, d = _hash(i, j + 1, 9), _hash(i + 1, j + 1, 9)
    blend = (a + (b - a) * su) * (1 - sv) + (c + (d - c) * su) * sv
    np.testing.assert_array_equal(value_noise(u, v, 9), blend)
    np.testing.assert_allclose(
        _hash(np.array([0.0, -3.0, 12345.0]), np.array([0.0, 7.0, -9.0]), 11),
        [0.39646792, 0.23215663, 0.25930166],
        atol=1e-8,
    )
    np.testing.assert_allclose(
        value_noise(np.array([0.25, -3.7, 100.5]), np.array([0.5, 7.1, -9.9]), 3),
        [0.37162229, 0.17837498, 0.73174624],
        atol=1e-8,
    )


def test_relative_directions_swap_when_the_agent_turns_around():
    rng = np.random.default_rng(0)
    for _ in range(200):
        pos, point = rng.uniform(0, 5, 2), rng.uniform(0, 5, 2)
        yaw = rng.uniform(-math.pi, math.pi)
        angle = abs(math.remainder(math.atan2(*(point - pos)[::-1]) - yaw, 2 * math.pi))
        if min(abs(angle - math.pi / 4), abs(angle - 3 * math.pi / 4)) < 1e-6:
            continue  # on a sector boundary
        swap = {"left": "right", "right": "left", "in front": "behind", "behind": "in front"}
        assert (
            relative_direction(pos, yaw + math.pi, point)
            == swap[relative_direction(pos, yaw, point)]
        )
    assert relative_direction((0, 0), 0.0, (1, 0.1)) == "in front"
    assert relative_direction((0, 0), 0.0, (0.1, 1)) == "left"


def test_answers_match_the_geometry():
    episode = make_episode(7, CONFIG)
    room = episode.room
    assert {r.question_type for r in episode.records} >= {"nearest", "counting", "distance"}
    for record in episode.records:
        world_pos, world_yaw = record.fields["world_position"], record.fields["world_yaw"]
        if record.question_type == "counting":
            kind = record.fields["object_kind"]
            assert record.fields["count"] == sum(o.kind == kind for o in room.objects)
        if record.question_type == "direction":
            obj = room.objects[record.fields["object_id"]]
            assert record.answers == [relative_direction(world_pos, world_yaw, obj.centre[:2])]
            # the object's BEV position gives the same answer from the BEV pose
            bev_answer = relative_direction(record.position, record.yaw,
                                            record.fields["object_position"])  # fmt: skip
            assert record.answers == [bev_answer]
        if "object_id" in record.fields:
            world = room.objects[record.fields["object_id"]].centre
            expected = episode.frame.points(np.array([world]))[0, :2]
            assert record.fields["object_position"] == pytest.approx(list(expected))
        else:
            assert "object_position" not in record.fields
        if record.question_type == "colour":
            assert record.answers == [room.objects[record.fields["object_id"]].colour]
        # BEV pose: the same point seen from the BEV frame
        bev = episode.frame.points(np.array([[*world_pos, episode.frames[0].pose_c2w[2, 3]]]))[0]
        assert record.position == pytest.approx(tuple(bev[:2]))
        assert abs(bev[2]) < 1e-9  # the agent is at camera height: BEV z = 0


def test_bev_targets_land_on_known_coordinates_with_a_tilted_first_camera():
    room = generate_room(0)
    room.objects.clear()
    K = intrinsics(64)  # noqa: N806
    pose = camera_pose(np.array([2.0, 1.5, 1.4]), yaw=0.3, pitch=-0.4, roll=0.2)
    frame = render(room, pose, K, (64, 64))
    from loc3r.engine.scene_frame import bev_frame

    scene = bev_frame(pose, np.array([0.0, 0.0, 1.0]), "given")
    targets, mask = bev_targets(frame, scene, 8, mode="centre")
    assert mask.all()
    # the centre pixel of cell (4, 4) is pixel (36, 36): back-project it independently
    p = _backproject(frame, 36, 36)
    expected = scene.points(p[None])[0, :2]
    np.testing.assert_allclose(targets[4, 4], expected, atol=1e-4)
    # BEV x of the origin is the first camera's heading on the floor: a point 1 m ahead, level
    ahead = pose[:3, 3] + np.array([math.cos(0.3), math.sin(0.3), 0.0])
    np.testing.assert_allclose(scene.points(ahead[None])[0], [1.0, 0.0, 0.0], atol=1e-9)
    mean_targets, mean_mask = bev_targets(frame, scene, 8, mode="mean")
    assert mean_mask.all() and np.abs(mean_targets - targets).max() < 1.5


def test_object_cover_counts_each_objects_share_of_each_cell():
    ids = np.full((6, 6), -1, dtype=np.int16)
    ids[0:3, 0:3] = 0  # object 0 fills cell (0, 0)
    ids[0, 3:6] = 1  # object 1: one row of cell (0, 1)
    ids[5, 5] = 2  # object 2: one pixel of cell (1, 1)
    cover = object_cover(ids, 4, 2)
    expected = np.zeros((2, 2, 4), dtype=np.float32)
    expected[0, 0, 0], expected[0, 1, 1], expected[1, 1, 2] = 1.0, 3 / 9, 1 / 9
    np.testing.assert_allclose(cover, expected)
    uneven = object_cover(np.zeros((7, 5), dtype=np.int16), 1, 3)  # cells of unequal size
    np.testing.assert_allclose(uneven, np.ones((3, 3, 1)))


def test_records_name_the_situation_objects_and_renders_show_them():
    episode = make_episode(3, EpisodeConfig(frames=8, image_size=96, situations=6))
    objects = episode.room.objects
    for record in episode.records:
        anchor, target = objects[record.fields["anchor_id"]], objects[record.fields["target_id"]]
        before, after = record.situation.split(", facing ")
        assert before.endswith((f" the {anchor.kind}", f" the {anchor.label}"))
        assert after in (f"the {target.kind}", f"the {target.label}")
        where = record.fields["world_position"]
        if record.situation.startswith("I am sitting on"):
            assert where == pytest.approx(list(anchor.centre[:2]))
        else:  # next to it: within reach of its edge, clear of every footprint
            assert distance_to_footprint(anchor, np.array([where]))[0] <= NEXT_TO_REACH + 1e-9
            assert min(distance_to_footprint(o, np.array([where]))[0] for o in objects) >= 0.3
        expected = episode.frame.points(np.array([anchor.centre]))[0, :2]
        assert record.fields["anchor_position"] == pytest.approx(list(expected))
    cover = np.stack([object_cover(f.object_id, len(objects), 4) for f in episode.frames])
    anchors = {r.fields["anchor_id"] for r in episode.records}
    shown = {a for a in anchors if cover[..., a].max() >= 0.1}
    assert len(anchors) >= 3 and shown == anchors  # the walk turns around the room


def test_answer_vocabulary_holds_every_answer_the_generator_gives():
    from loc3r.scenes import answer_vocabulary
    from loc3r.scenes.situations import make_questions, make_situation

    vocabulary = answer_vocabulary()
    assert len(vocabulary) == 41
    assert {"in front", "left", "shelf", "purple", "one", "five", "1", "10"} <= vocabulary
    seen: dict[str, set[str]] = {}
    for seed in range(150):
        room, rng = generate_room(seed), np.random.default_rng(seed)
        for _ in range(3):
            if (situated := make_situation(room, rng)) is not None:
                for record in make_questions(room, situated, rng):
                    seen.setdefault(record.question_type, set()).update(record.answers)
    assert set().union(*seen.values()) <= vocabulary
    assert seen["direction"] == {"in front", "left", "behind", "right"}
    assert len(seen["nearest"] | seen["what_side"]) >= 10 and len(seen["colour"]) >= 8


def test_distance_to_footprint_of_a_rotated_box():
    box = SceneObject(0, "bed", "red", (2.0, 1.0, 0.3), (2.0, 1.0, 0.6), math.pi / 2)
    # rotated a quarter turn: 1 m along world x, 2 m along world y, centred at (2, 1)
    points = np.array([[2.0, 1.0], [2.4, 1.9], [3.0, 1.0], [2.0, 3.0], [3.5, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(distance_to_footprint(box, points), [0.0, 0.0, 0.5, 1.0, 1.0, 1.5])
    # at a yaw whose sign matters: 0.2 m beyond the edge along the box's own x and y axes
    tilted = SceneObject(1, "table", "brown", (3.0, 2.0, 0.4), (1.2, 0.6, 0.8), 0.5)
    along_x = np.array([math.cos(0.5), math.sin(0.5)])
    along_y = np.array([-math.sin(0.5), math.cos(0.5)])
    centre = np.array([3.0, 2.0])
    beyond = np.array([centre + 0.8 * along_x, centre - 0.5 * along_y, centre + 0.5 * along_x])
    np.testing.assert_allclose(distance_to_footprint(tilted, beyond), [0.2, 0.2, 0.0], atol=1e-12)
    corner = box.footprint()[0]  # a corner is on the footprint's edge
    assert distance_to_footprint(box, corner[None])[0] == pytest.approx(0.0, abs=1e-9)
    outward = corner + 0.3 * (corner - np.array(box.centre[:2])) / np.linalg.norm(
        corner - np.array(box.centre[:2])
    )
    assert distance_to_footprint(box, outward[None])[0] == pytest.approx(0.3)


def test_floor_points_near_an_object_are_within_reach_and_free():
    for seed in range(30):
        room = generate_room(seed)
        for obj in room.objects:
            points = floor_points_near(room, obj, np.random.default_rng(seed), 5, 0.5)
            assert len(points) <= 5
            if len(points):
                assert (distance_to_footprint(obj, points) <= 0.5 + 1e-9).all()
                for other in room.objects:  # clear of every footprint, by the corners too
                    assert (distance_to_footprint(other, points) >= 0.3 - 1e-9).all()
                    corners = other.footprint()
                    gaps = np.linalg.norm(points[:, None] - corners[None], axis=-1)
                    assert (gaps >= 0.3 - 1e-9).all()
                assert ((points >= 0.3) & (points <= [room.width - 0.3, room.depth - 0.3])).all()
    room = generate_room(1)
    anchor = room.objects[2]
    again = [floor_points_near(room, anchor, np.random.default_rng(4), 3, 0.5) for _ in "ab"]
    np.testing.assert_array_equal(*again)  # deterministic from the generator
    # most objects have free floor within half a metre; the old rule (nearest of 12 random floor
    # points anywhere) left a median 0.5 m and a 90th percentile 0.95 m from the edge
    rooms = [generate_room(s) for s in range(40)]
    found = [
        len(floor_points_near(r, o, np.random.default_rng(s), 1, 0.5)) > 0
        for s, r in enumerate(rooms)
        for o in r.objects
    ]
    assert np.mean(found) > 0.9
    assert len(free_floor_points(generate_room(0), np.random.default_rng(0), 4)) == 4


def test_camera_points_unproject_each_pixel_centre():
    from loc3r.scenes.render import camera_points

    depth = np.array([[2.0, 2.0], [4.0, np.inf]], np.float32)
    K = np.array([[1.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]])  # noqa: N806
    points = camera_points(depth, K)
    assert points.dtype == np.float64 and points.shape == (2, 2, 3)
    np.testing.assert_allclose(points[0, 0], [-1.0, -0.5, 2.0])  # centre (0.5, 0.5)
    np.testing.assert_allclose(points[0, 1], [1.0, -0.5, 2.0])  # centre (1.5, 0.5)
    np.testing.assert_allclose(points[1, 0], [-2.0, 1.0, 4.0])  # centre (0.5, 1.5)
    assert np.isinf(points[1, 1, 2])  # no surface: left for the caller to mask
