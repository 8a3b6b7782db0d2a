"""A vectorised numpy ray caster for the procedural rooms: RGB, metric z-depth, exact poses.

Cameras use OpenCV axes (x right, y down, z forward); poses are camera-to-world 4x4 in the room's
z-up world. Depth is z-depth along the optical axis, metres. Surfaces get Lambert shading from a
fixed light direction plus procedural texture (floor tiles, wall stripes, object grain), so a
learned 3D model has something to track.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from loc3r.scenes.textures import RoomLook, shade
from loc3r.scenes.world import COLOURS, Room

LIGHT = np.array([0.3, 0.5, 0.81])
LIGHT = LIGHT / np.linalg.norm(LIGHT)


def intrinsics(size: int, fov_deg: float = 70.0) -> np.ndarray:
    """Square pinhole intrinsics with a horizontal field of view of `fov_deg`."""
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    return np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])


def camera_pose(position: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0):
    """Camera-to-world 4x4 of a camera at `position` looking along heading `yaw`.

    Heading is about +z from +x; `pitch` > 0 looks up; `roll` in radians.
    """
    # OpenCV camera axes expressed in a level, x-forward body frame: z_cam = x_body, etc.
    cam_in_body = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    body = Rotation.from_euler("ZYX", [yaw, -pitch, roll]).as_matrix()
    pose = np.eye(4)
    pose[:3, :3] = body @ cam_in_body
    pose[:3, 3] = position
    return pose


@dataclass
class Frame:
    """One rendered view."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres (z-depth)
    object_id: np.ndarray  # (H, W) int16, -1 for room surfaces
    pose_c2w: np.ndarray  # (4, 4) float64
    K: np.ndarray  # (3, 3) float64  # noqa: N815


def camera_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:  # noqa: N803
    """(H, W) z-depth and (3, 3) intrinsics -> (H, W, 3) float64 points in the camera's frame.

    Each pixel centre unprojected (OpenCV axes); pixels without a surface keep their depth's
    value (0 or inf), so callers mask them.
    """
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return rays * depth.astype(np.float64)[..., None]


def _texture(points: np.ndarray, normals: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """A multiplicative texture in [0.75, 1.15] from position (kind 0 floor, 1 wall, 2 object)."""
    x, y, z = points.T
    tiles = ((np.floor(x / 0.5) + np.floor(y / 0.5)) % 2) * 0.18 - 0.09
    stripes = np.sin(6.0 * (x + y) + 2.0 * z) * 0.06
    grain = np.sin(17.0 * x + 11.0 * y + 13.0 * z) * 0.07 + np.sin(5.0 * z) * 0.04
    out = np.where(kind == 0, tiles, np.where(kind == 1, stripes, grain))
    return 1.0 + out


def _rays_near(
    origin: np.ndarray, d: np.ndarray, d_squared: np.ndarray, centre: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """Indices of the rays origin + t d (t > 0; |d|^2 given) that pass within a box's sphere.

    A cheap, conservative cull before the slab test: a ray that misses the sphere around the box
    (radius: half its diagonal, with a margin) cannot hit the box, so testing only these rays
    gives the same hits as testing all of them.
    """
    radius = 0.5 * float(np.linalg.norm(size)) * (1 + 1e-6) + 1e-6
    to_centre = centre - origin
    distance_sq = to_centre @ to_centre
    if distance_sq <= radius**2:  # the camera is inside the sphere: every ray may hit
        return np.arange(len(d))
    along = d @ to_centre  # |d| t of the closest approach
    miss_sq = distance_sq - along * along / d_squared  # squared distance of the line to the centre
    return np.flatnonzero((along > 0) & (miss_sq <= radius**2))


def cast_rays(room: Room, origin: np.ndarray, d: np.ndarray):
    """Intersect rays origin + t d (d: (N, 3), any length) with the room and its objects.

    Returns t (N,), unit normals (N, 3), base colours (N, 3), surface kind (N,: 0 floor, 1 wall
    or ceiling, 2 object) and object ids (N,, -1 for room surfaces).
    """
    n_rays = len(d)

    # The room from inside: exit distance per axis.
    lo, hi = np.zeros(3), np.array([room.width, room.depth, room.height])
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axis = np.where(d > 0, (hi - origin) / d, np.where(d < 0, (lo - origin) / d, np.inf))
    axis = np.argmin(t_axis, axis=1)
    t_best = t_axis[np.arange(n_rays), axis]
    normal = np.zeros((n_rays, 3))
    normal[np.arange(n_rays), axis] = -np.sign(d[np.arange(n_rays), axis])
    surface = np.where(axis == 2, np.where(d[:, 2] < 0, 0, 1), 1)  # floor 0, walls/ceiling 1
    colour = np.where(
        (surface == 0)[:, None], COLOURS[room.floor_colour], COLOURS[room.wall_colour]
    ).astype(np.float64)
    object_id = np.full(n_rays, -1, dtype=np.int16)
    d_squared = np.einsum("ij,ij->i", d, d)

    for obj in room.objects:  # oriented boxes: slab test in the box frame
        centre = np.array(obj.centre)
        rays = _rays_near(origin, d, d_squared, centre, np.asarray(obj.size))
        if len(rays) == 0:
            continue
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        to_local = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
        o_local = to_local @ (origin - centre)
        d_local = d[rays] @ to_local.T
        half = np.array(obj.size) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o_local) / d_local
            t2 = (half - o_local) / d_local
        t_min, t_max = np.minimum(t1, t2), np.maximum(t1, t2)
        t_min = np.where(np.isnan(t_min), -np.inf, t_min)
        t_max = np.where(np.isnan(t_max), np.inf, t_max)
        near_axis = np.argmax(t_min, axis=1)
        t_near = t_min[np.arange(len(rays)), near_axis]
        t_far = np.min(t_max, axis=1)
        hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_best[rays])
        if not hit.any():
            continue
        index, near_axis = rays[hit], near_axis[hit]
        local_normal = np.zeros((len(index), 3))
        local_normal[np.arange(len(index)), near_axis] = -np.sign(
            d_local[np.flatnonzero(hit), near_axis]
        )
        t_best[index] = t_near[hit]
        normal[index] = local_normal @ to_local
        colour[index] = np.array(COLOURS[obj.colour], float)
        surface[index] = 2
        object_id[index] = obj.id

    return t_best, normal, colour, surface, object_id


def render(
    room: Room,
    pose_c2w: np.ndarray,
    K: np.ndarray,  # noqa: N803
    size: tuple[int, int],
    look: RoomLook | None = None,
) -> Frame:
    """Render one frame of `room` from a camera inside it (flat colours unless a `look`)."""
    height, width = size
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    d_cam = d_cam.reshape(-1, 3)
    rotation, origin = pose_c2w[:3, :3], pose_c2w[:3, 3]
    d = d_cam @ rotation.T  # world directions; the ray parameter t is the z-depth
    t_best, normal, colour, surface, object_id = cast_rays(room, origin, d)
    points = origin + d * t_best[:, None]
    if look is None:
        lambert = 0.55 + 0.45 * np.abs(normal @ LIGHT)
        shaded = colour * (lambert * _texture(points, normal, surface))[:, None]
    else:
        shaded = shade(look, room, points, normal, colour, surface, object_id)
    rgb = np.clip(shaded, 0, 255).astype(np.uint8).reshape(height, width, 3)
    depth = t_best.astype(np.float32).reshape(height, width)
    return Frame(rgb, depth, object_id.reshape(height, width), pose_c2w.copy(), K.copy())
