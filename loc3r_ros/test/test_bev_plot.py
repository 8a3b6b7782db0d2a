"""The bird's-eye map: a PNG a person can read distances off (metres, grid, scale bar, legend)."""

from __future__ import annotations

import math
import warnings

import cv2
import matplotlib  # noqa: F401  (imported here, outside the warnings-as-errors block below)
import numpy as np
import pytest

from loc3r.bev_plot import clean_text, draw_bev, render_bev, write_bev_png
from loc3r.engine.scene_engine import AgentPose
from loc3r.engine.scene_frame import SceneFrame, SceneView

MAGENTA = (255, 0, 255)


def camera(x: float, y: float, yaw: float) -> np.ndarray:
    """Camera-to-BEV pose of a level camera at (x, y) looking along yaw (optical axis = +z)."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = -left, [0.0, 0.0, -1.0], forward
    pose[:3, 3] = [x, y, 0.0]
    return pose


def make_view(points, colours, cameras=()) -> SceneView:
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    frame = SceneFrame(np.eye(4), "given")
    return SceneView(frame, list(cameras), list(range(len(cameras))), points, colours)


def room_view(rng) -> SceneView:
    """Grey walls of a 5 m x 4 m room and a short camera walk."""
    walls = []
    for t in np.linspace(0, 1, 400):
        walls += [[-1 + 5 * t, -2, 0], [-1 + 5 * t, 2, 0], [-1, -2 + 4 * t, 0], [4, -2 + 4 * t, 0]]
    walls = np.array(walls) + rng.normal(0, 0.01, (len(walls), 3))
    cameras = [camera(0.3 * i, 0.1 * i, 0.2 * i) for i in range(6)]
    return make_view(walls, np.full((len(walls), 3), 120), cameras)


def blobs(image: np.ndarray, colour=MAGENTA) -> np.ndarray:
    """(K, 2) centroids (col, row) of the blobs drawn in `colour` (blended over white)."""
    rgb = image.astype(int)
    mask = np.ones(rgb.shape[:2], bool)
    for channel, value in enumerate(colour):
        mask &= (rgb[..., channel] < 170) if value == 0 else (rgb[..., channel] > 200)
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))  # one blob per spot
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    return centroids[1:][stats[1:, cv2.CC_STAT_AREA] >= 30]


def test_png_is_written_decodes_and_has_the_size(tmp_path):
    rng = np.random.default_rng(0)
    pose = AgentPose(2.0, 0.5, 0.8, 0.4, 0.25, 0.3)
    path = tmp_path / "bev.png"
    bev = write_bev_png(path, room_view(rng), pose, 500, objects=[("red chair", 3.0, 1.0)],
                        truth=(2.2, 0.4, 0.6), situation="I am on the bed",
                        question="What is on my left?", answer="the chair")  # fmt: skip
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (500, 500, 3) and image.std() > 10
    np.testing.assert_array_equal(image[..., ::-1], bev.image)
    # the old call (positional size and margin, RGB array back) still works
    old = draw_bev(room_view(rng), pose)
    assert old.shape == (640, 640, 3) and old.dtype == np.uint8
    assert draw_bev(room_view(rng), pose, 800, 1.0).shape == (800, 800, 3)


def test_metres_map_to_pixels_at_one_scale_on_both_axes():
    rng = np.random.default_rng(1)
    room = room_view(rng)
    marks = [(0.0, 0.0), (2.0, 0.0), (0.0, 2.0)]
    spots = np.concatenate(
        [np.array([[x, y, 0.0]]) + rng.normal(0, 0.015, (40, 3)) for x, y in marks]
    )
    view = make_view(np.concatenate([room.points, spots]),
                     np.concatenate([room.colors, np.tile(MAGENTA, (len(spots), 1))]))  # fmt: skip
    bev = render_bev(view, None, 800)
    found = blobs(bev.image)
    assert len(found) == 3, found
    expected = bev.to_pixel([x for x, _ in marks], [y for _, y in marks])
    order = [int(np.argmin(np.linalg.norm(found - e, axis=1))) for e in expected]
    found = found[order]
    np.testing.assert_allclose(found, expected, atol=2.0)  # the transform describes the image
    # 2 m along x and 2 m along y are the same number of pixels: one scale, equal aspect
    along_x = found[1] - found[0]
    along_y = found[2] - found[0]
    assert abs(along_x[1]) < 2 and along_x[0] > 0  # x points right
    assert abs(along_y[0]) < 2 and along_y[1] < 0  # y points up
    per_metre = np.linalg.norm(along_x) / 2.0
    assert abs(np.linalg.norm(along_y) / 2.0 - per_metre) < 1.5
    assert abs(bev.pixels_per_metre - per_metre) < 1.5
    assert per_metre > 40  # a 5 m room fills an 800 px map
    # the scale bar is drawn (dark) where it is said to be, and is as long as it claims
    (c0, r0), (c1, r1) = bev.scale_bar_px
    assert abs(r1 - r0) < 0.5 and abs((c1 - c0) - bev.scale_bar_m * per_metre) < 3.0
    row = int(round(r0))
    segment = bev.image[row - 1 : row + 2, int(c0) + 2 : int(c1) - 1].min(axis=0).mean(axis=1)
    assert segment.max() < 90
    assert bev.scale_bar_m in (0.5, 1.0, 2.0)


def test_grid_lines_sit_on_round_metres():
    rng = np.random.default_rng(2)
    bev = render_bev(room_view(rng), None, 800)
    assert bev.grid_step in (0.5, 1.0)
    # a horizontal strip of the map above the room (y = 2.4 m .. top) holds only grid lines
    top = bev.to_pixel(0.0, bev.y_limits[1])[1]
    low = bev.to_pixel(0.0, 2.25)[1]
    strip = bev.image[int(top) + 3 : int(low), :, :].astype(int).mean(axis=2)
    grey = ((strip > 140) & (strip < 240)).mean(axis=0)
    left, right = (bev.to_pixel(v, 0.0)[0] for v in bev.x_limits)
    xs = np.arange(math.ceil(bev.x_limits[0] / bev.grid_step), bev.x_limits[1] / bev.grid_step)
    checked = 0
    for k in xs:
        col = bev.to_pixel(k * bev.grid_step, 0.0)[0]
        if left + 5 < col < right - 5:
            near = grey[int(round(col)) - 1 : int(round(col)) + 2].max()
            between = grey[int(round(col + bev.grid_step * bev.pixels_per_metre / 2))]
            assert near > 0.8 and between < 0.2, (k, near, between)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    "view",
    [
        None,
        make_view(np.zeros((0, 3)), np.zeros((0, 3))),
        make_view([[1.0, 1.0, 0.0]], [[0, 0, 0]]),
    ],
)
def test_an_empty_scene_still_renders(view):
    bev = render_bev(view, None, 640)
    assert bev.image.shape == (640, 640, 3) and bev.image.std() > 5
    assert math.isfinite(bev.pixels_per_metre) and bev.pixels_per_metre > 0


def test_non_finite_inputs_are_left_out():
    view = make_view([[np.nan, 0, 0], [np.inf, 1, 1], [1, 1, 0]], [[1, 2, 3]] * 3,
                     [camera(0, 0, 0), np.full((4, 4), np.nan)])  # fmt: skip
    poses = [AgentPose(np.nan, 0, 0, 1, 1, 0.1), AgentPose(1, 1, np.nan, np.inf, 1e9, np.nan)]
    for pose in poses:
        bev = render_bev(view, pose, 400, objects=[("a", np.nan, 1), ("b", "x", 2)],
                         truth=(np.nan, 0, 0))  # fmt: skip
        assert bev.image.shape == (400, 400, 3)


HOSTILE = [
    "",
    "x" * 10_000,
    "word " * 2_000,
    "\x00\x01\x07\x1b[31mred\x1b[0m\r\n\t\x7f\u2028\u202e",
    "I am \U0001f44d\U0001f3fd by the \U0001f6aa \u200d\U0001f469\u200d\U0001f4bb",
    "lone \ud800 surrogate and \udcff from a non-UTF-8 argv",
    "$\\frac{1}{0}$ $$ ^_{ \\ $x",
    "\u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u00e9\u00f1\u00df e\u0301",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_the_title_does_not_crash(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a missing-glyph or mathtext warning
        bev = render_bev(None, AgentPose(0, 0, 0, 0.3, 0.3, 0.2), 640, situation=text,
                         question=text, answer=text, objects=[(text, 0.5, 0.5)])  # fmt: skip
    image = bev.image
    assert image.shape == (640, 640, 3)
    # long lines are wrapped or cut, never drawn past the picture's sides
    assert (image[:, :4] == 255).all() and (image[:, -4:] == 255).all()


def test_clean_text():
    assert clean_text("a\x00b\n\tc  d", 50) == "a b c d"
    assert clean_text(None, 10) == ""
    cut = clean_text("y" * 500, 20)
    assert len(cut) == 20 and cut.endswith("\u2026")
    assert "\ud800" not in clean_text("a\ud800b", 10)
    assert clean_text("caf\u00e9 $x$", 10) == "caf\u00e9 $x$"
