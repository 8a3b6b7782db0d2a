"""The furnished look: each kind's details on its box, nothing else changed."""

from __future__ import annotations

import numpy as np
import pytest

from loc3r.scenes import EpisodeConfig, make_episode
from loc3r.scenes.furniture import METAL, SHADOW, furnish
from loc3r.scenes.world import CATALOGUE


def face_grid(size, face: int, sign: float = 1.0, n: int = 60) -> np.ndarray:
    """(n*n, 3) box-local points covering one face of a box of full extents `size`."""
    half = np.asarray(size, dtype=float) / 2
    a, b = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    a, b = a.ravel() * 0.999, b.ravel() * 0.999
    if face == 0:
        return np.stack([np.full_like(a, sign * half[0]), a * half[1], b * half[2]], -1)
    if face == 1:
        return np.stack([a * half[0], np.full_like(a, sign * half[1]), b * half[2]], -1)
    return np.stack([a * half[0], b * half[1], np.full_like(a, sign * half[2])], -1)


def paint(kind: str, size, face: int, sign: float = 1.0, grey: float = 120.0):
    local = face_grid(size, face, sign)
    rgb = np.full((len(local), 3), grey)
    faces = np.full(len(local), face)
    return local, rgb, furnish(kind, local, faces, size, rgb, seed=5)


def test_the_furnished_look_changes_object_pixels_only():
    config = dict(frames=4, image_size=64, walk="room_scan")
    textured = make_episode(9930001, EpisodeConfig(look="textured", **config))
    furnished = make_episode(9930001, EpisodeConfig(look="furnished", **config))
    assert [r.to_dict() for r in furnished.records] == [r.to_dict() for r in textured.records]
    changed = 0
    for a, b in zip(textured.frames, furnished.frames, strict=True):
        np.testing.assert_array_equal(a.pose_c2w, b.pose_c2w)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.object_id, b.object_id)
        room = a.object_id < 0
        windows = np.isin(a.object_id, [o.id for o in textured.room.objects if o.kind == "window"])
        np.testing.assert_array_equal(a.rgb[room | windows], b.rgb[room | windows])
        changed += int((a.rgb[~room] != b.rgb[~room]).any(-1).sum())
    assert changed > 0


def test_a_desk_and_a_table_of_one_size_and_colour_look_different():
    size = (1.2, 0.75, 0.75)
    _, _, desk = paint("desk", size, face=1)
    _, _, table = paint("table", size, face=1)
    assert np.abs(desk - table).max(-1).mean() > 10  # drawers where the table shows its legs
    _, _, cabinet = paint("cabinet", (0.9, 0.4, 1.6), face=1)
    _, _, shelf = paint("shelf", (0.9, 0.4, 1.6), face=1)
    assert np.abs(cabinet - shelf).max(-1).mean() > 10


def test_a_table_shows_its_legs_and_the_shade_under_its_top():
    size = (1.2, 0.8, 0.75)
    local, rgb, out = paint("table", size, face=1)
    height = local[:, 2] + size[2] / 2
    under = (height < size[2] - 0.05) & (np.abs(local[:, 0]) < size[0] / 2 - 0.06)
    np.testing.assert_allclose(out[under], rgb[under] * SHADOW)
    np.testing.assert_array_equal(out[~under], rgb[~under])  # the top and the legs


def test_a_cabinet_has_a_seam_and_two_handles():
    size = (1.0, 0.5, 1.4)
    local, rgb, out = paint("cabinet", size, face=1)
    assert (out[np.abs(local[:, 0]) < 0.012] < rgb[0]).all()
    handles = (out == METAL).all(-1)
    assert handles.any()
    assert (local[handles, 0] > 0).any() and (local[handles, 0] < 0).any()


# the face each kind's details show on to a camera in the room (wall items face it with +y)
VISIBLE_FACE = {"tv": (1, 1.0), "door": (1, 1.0), "bed": (2, 1.0), "sofa": (1, -1.0)}


@pytest.mark.parametrize("kind", sorted(set(CATALOGUE) - {"window"}))
def test_every_kind_but_the_window_gets_details_on_a_face_the_camera_sees(kind):
    spec = CATALOGUE[kind]
    size = (np.mean(spec.width), np.mean(spec.depth), np.mean(spec.height))
    face, sign = VISIBLE_FACE.get(kind, (1, 1.0))
    _, rgb, out = paint(kind, size, face, sign)
    changed = (out != rgb).any(-1)
    assert 0.002 < changed.mean() < 1.0  # some of the face, not all of it
    assert np.isfinite(out).all() and out.min() >= 0


def test_pixels_without_a_detail_keep_their_shading_even_above_the_colour_range():
    """Shading may exceed 255 before lighting; only the painted pixels change (render clips)."""
    size = (0.85, 0.05, 2.05)
    local, rgb, out = paint("door", size, face=1, grey=300.0)
    knob = (out == METAL).all(-1)
    assert 0 < knob.sum() < len(knob)
    np.testing.assert_array_equal(out[~knob], rgb[~knob])


def test_a_window_is_left_as_it_is():
    local, rgb, out = paint("window", (1.2, 0.05, 1.1), face=1)
    np.testing.assert_array_equal(out, rgb)
