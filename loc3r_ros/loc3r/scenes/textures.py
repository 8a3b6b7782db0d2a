"""Textured looks for the procedural rooms: wallpaper, wood, tiles, fabric, pictures, window views.

A real room gives a feature matcher (and a learned 3D model) texture at many scales; flat colour
gives it nothing. A `RoomLook` is drawn once per room from its seed and shades every surface point
from its own position (world coordinates for the room, box coordinates for objects), so a point
looks the same from every view, as multi-view geometry needs. Everything is vectorised numpy
value noise: deterministic, no image files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loc3r.scenes import furniture  # furniture imports this module as a module too
from loc3r.scenes.world import Room

WALL_PATTERNS = ("damask", "stripes", "plaster", "brick")
FLOOR_PATTERNS = ("planks", "tiles", "carpet")
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class Picture:
    """A framed picture or poster on a wall: a rectangle with a random mosaic."""

    axis: int  # 0: on a wall x = const, 1: on a wall y = const
    offset: float  # that wall's coordinate
    centre: tuple[float, float]  # (along the wall, height), metres
    size: tuple[float, float]  # (width, height), metres
    cells: float  # mosaic cell size, metres
    seed: int


@dataclass
class RoomLook:
    """How a room's surfaces look (drawn once per room; see `make_look`)."""

    seed: int
    light: np.ndarray  # (3,) unit direction of the key light
    ambient: float  # share of light that does not depend on the normal
    wall_pattern: str
    floor_pattern: str
    contrast: float  # texture amplitude
    pictures: list[Picture] = field(default_factory=list)
    furnished: bool = False  # each object kind's details painted on (loc3r.scenes.furniture)


def make_look(room: Room, seed: int, furnished: bool = False) -> RoomLook:
    """A random look for `room` (deterministic from `seed`): patterns, lighting and pictures.

    `furnished` adds each kind's details (the furnished look); everything else is the same.
    """
    rng = np.random.default_rng([seed, 7919])
    light = np.array([*rng.normal(size=2), rng.uniform(0.5, 1.5)])
    look = RoomLook(
        seed=seed,
        light=light / np.linalg.norm(light),
        ambient=float(rng.uniform(0.35, 0.65)),
        wall_pattern=str(rng.choice(WALL_PATTERNS)),
        floor_pattern=str(rng.choice(FLOOR_PATTERNS)),
        contrast=float(rng.uniform(0.7, 1.0)),
        furnished=furnished,
    )
    spans = {0: room.depth, 1: room.width}
    for _ in range(int(rng.integers(3, 8))):
        axis = int(rng.integers(2))
        width, height = float(rng.uniform(0.4, 1.4)), float(rng.uniform(0.3, 1.0))
        along = float(rng.uniform(width / 2 + 0.1, max(spans[axis] - width / 2 - 0.1, 0.2)))
        look.pictures.append(
            Picture(
                axis=axis,
                offset=float(rng.choice([0.0, room.width if axis == 0 else room.depth])),
                centre=(along, float(rng.uniform(1.0, room.height - height / 2 - 0.2))),
                size=(width, height),
                cells=float(rng.uniform(0.04, 0.12)),
                seed=int(rng.integers(1 << 30)),
            )
        )
    return look


_HASH_I = np.uint64(0x632BE59BD9B4E019)
_HASH_J = np.uint64(0x85157AF5)


def _lattice(a: np.ndarray) -> np.ndarray:
    """Integer-valued coordinates as uint64 (negative ones wrap, two's complement)."""
    return a.astype(np.int64).astype(np.uint64)


def _finish(h: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) values from mixed lattice products `h` (splitmix64's finaliser, in place)."""
    with np.errstate(over="ignore"):
        h += np.uint64(seed & 0xFFFFFFFF) * _MIX
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
        h >>= np.uint64(40)
    return h.astype(np.float64) / float(1 << 24)


def _hash(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) values from integer lattice coordinates (splitmix64 of the pair)."""
    with np.errstate(over="ignore"):
        return _finish((_lattice(i) * _HASH_I) ^ (_lattice(j) * _HASH_J), seed)


def value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) with unit lattice spacing."""
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    with np.errstate(over="ignore"):  # the corners' products, (i + 1) K = i K + K mod 2^64
        hi, hj = _lattice(i) * _HASH_I, _lattice(j) * _HASH_J
        hi1, hj1 = hi + _HASH_I, hj + _HASH_J
        a, b = _finish(hi ^ hj, seed), _finish(hi1 ^ hj, seed)
        c, d = _finish(hi ^ hj1, seed), _finish(hi1 ^ hj1, seed)
    return (a + (b - a) * su) * (1 - sv) + (c + (d - c) * su) * sv


def fbm(u: np.ndarray, v: np.ndarray, seed: int, base: float, octaves: int = 4) -> np.ndarray:
    """Fractal noise in about [-1, 1]: octaves of value noise from `base` cycles per metre."""
    total, weight, norm = np.zeros_like(u), 1.0, 0.0
    for octave in range(octaves):
        scale = base * 2.0**octave
        total += weight * (value_noise(u * scale, v * scale, seed + 101 * octave) - 0.5)
        norm += weight * 0.5
        weight *= 0.6
    return total / norm


def _detail(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Fine detail every real surface has (scuffs, weave, flecks): 5-20 cm blobs and flecks."""
    blobs = 0.3 * fbm(u, v, seed, 10.0, octaves=3)
    cell_u, cell_v = np.floor(u / 0.08), np.floor(v / 0.08)
    fleck = _hash(cell_u, cell_v, seed + 1) > 0.8
    du = (u / 0.08 - cell_u) - _hash(cell_u, cell_v, seed + 2) * 0.6 - 0.2
    dv = (v / 0.08 - cell_v) - _hash(cell_u, cell_v, seed + 3) * 0.6 - 0.2
    dots = np.where(
        fleck & (du**2 + dv**2 < 0.04), 0.3 * np.sign(_hash(cell_u, cell_v, seed + 4) - 0.5), 0.0
    )
    return blobs + dots


def _wall(u: np.ndarray, v: np.ndarray, pattern: str, seed: int) -> np.ndarray:
    """Wallpaper shade offsets (about [-0.4, 0.4]) at wall coordinates (along, height)."""
    grain = 0.12 * fbm(u, v, seed, 6.0)
    if pattern == "damask":  # a repeating motif of blobs, offset every other row
        row = np.floor(v / 0.25)
        cu, cv = (u / 0.25 + 0.5 * row) % 1.0 - 0.5, v / 0.25 % 1.0 - 0.5
        motif = np.exp(-((cu / 0.22) ** 2 + (cv / 0.3) ** 2) * 3) - 0.3
        return 0.35 * motif + grain
    if pattern == "stripes":  # stripes of random widths and shades
        band = np.floor(u / 0.11)
        return 0.3 * (_hash(band, band * 0 + 3, seed) - 0.5) + grain
    if pattern == "brick":
        row = np.floor(v / 0.075)
        col = np.floor(u / 0.22 + 0.5 * (row % 2))
        mortar = ((v % 0.075) < 0.01) | (((u / 0.22 + 0.5 * (row % 2)) % 1.0) < 0.05)
        return np.where(mortar, 0.35, 0.25 * (_hash(col, row, seed) - 0.5)) + grain
    return 0.3 * fbm(u, v, seed, 3.0, octaves=5)  # plaster


def _floor(u: np.ndarray, v: np.ndarray, pattern: str, seed: int) -> np.ndarray:
    """Floor shade offsets at floor coordinates (x, y)."""
    if pattern == "planks":  # planks 0.15 m wide, random lengths, wood grain along them
        plank = np.floor(v / 0.15)
        start = _hash(plank, plank * 0 + 1, seed) * 1.2
        piece = np.floor((u + start) / 1.2)
        seam = ((v % 0.15) < 0.006) | ((((u + start) / 1.2) % 1.0) < 0.005)
        grain = 0.15 * fbm(u * 0.3, v * 4.0, seed, 4.0)
        return np.where(seam, -0.4, 0.3 * (_hash(piece, plank, seed + 9) - 0.5) + grain)
    if pattern == "tiles":  # 0.3 m tiles with grout and a marbled fill
        grout = ((u % 0.3) < 0.012) | ((v % 0.3) < 0.012)
        tile = 0.2 * (_hash(np.floor(u / 0.3), np.floor(v / 0.3), seed) - 0.5)
        return np.where(grout, -0.35, tile + 0.2 * fbm(u, v, seed, 5.0))
    return 0.35 * fbm(u, v, seed, 8.0, octaves=5)  # carpet


def _picture(u: np.ndarray, v: np.ndarray, picture: Picture) -> np.ndarray:
    """(N, 3) RGB of a mosaic picture at wall coordinates; a dark frame 3 cm wide."""
    cu = np.floor((u - picture.centre[0]) / picture.cells)
    cv = np.floor((v - picture.centre[1]) / picture.cells)
    rgb = np.stack([_hash(cu, cv, picture.seed + k) for k in range(3)], -1) * 220 + 20
    edge = np.minimum(
        picture.size[0] / 2 - np.abs(u - picture.centre[0]),
        picture.size[1] / 2 - np.abs(v - picture.centre[1]),
    )
    return np.where((edge < 0.03)[:, None], 30.0, rgb)


def _window_view(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3) RGB of a view out of a window: sky, a ragged skyline, trees."""
    horizon = 1.3 + 0.25 * fbm(u, u * 0, seed, 2.0)
    sky = np.stack([150 + 40 * fbm(u, v, seed + 1, 1.5), 190 + 0 * u, 240 + 0 * u], -1)
    ground = np.stack([60 + 0 * u, 110 + 60 * fbm(u, v, seed + 2, 9.0), 50 + 0 * u], -1)
    return np.where((v > horizon)[:, None], sky, ground)


def shade(
    look: RoomLook,
    room: Room,
    points: np.ndarray,
    normals: np.ndarray,
    colour: np.ndarray,
    surface: np.ndarray,
    object_id: np.ndarray,
) -> np.ndarray:
    """(N, 3) float RGB of hit points (world `points`, unit `normals`, base `colour`).

    `surface` is 0 floor, 1 wall or ceiling, 2 object; `object_id` is -1 on room surfaces.
    """
    x, y, z = points.T
    axis = np.argmax(np.abs(normals), axis=1)  # the surface's normal axis (room surfaces)
    u = np.where(axis == 0, y, x)  # along the wall
    offsets = np.zeros(len(points))
    walls = surface == 1
    offsets[walls] = look.contrast * _wall(u[walls], z[walls], look.wall_pattern, look.seed)
    floor = surface == 0
    offsets[floor] = look.contrast * _floor(x[floor], y[floor], look.floor_pattern, look.seed + 1)
    room_surface = surface < 2
    offsets[room_surface] += look.contrast * _detail(
        u[room_surface], np.where(floor, y, z)[room_surface], look.seed + 5
    )
    rgb = colour * (1.0 + offsets)[:, None] + 60.0 * offsets[:, None]  # dark colours show it too
    for obj in room.objects:
        hit = np.flatnonzero(object_id == obj.id)
        if len(hit) == 0:
            continue
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        rel = points[hit] - np.array(obj.centre)
        local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1],
                          rel[:, 2]], -1)  # fmt: skip
        face = np.argmax(np.abs(local) / np.array(obj.size), axis=1)  # the box face hit
        ou = np.where(face == 0, local[:, 1], local[:, 0])
        ov = np.where(face == 2, local[:, 1], local[:, 2])
        if obj.kind == "window":
            view = _window_view(ou, ov + obj.centre[2], look.seed + obj.id)
            frame = np.minimum(obj.size[0] / 2 - np.abs(ou), obj.size[2] / 2 - np.abs(ov))
            rgb[hit] = np.where((frame < 0.06)[:, None], colour[hit], view)
            continue
        scale = 9.0 if obj.kind in ("sofa", "bed", "chair") else 4.0  # fabric finer than wood
        pattern_seed = look.seed + 31 * obj.id
        grain = 0.35 * fbm(ou * 1.0, ov * 2.5, pattern_seed, scale)
        panel = 0.12 * np.sign(np.sin(ou * 9.0 + obj.id)) * np.sign(np.sin(ov * 7.0))
        offset = look.contrast * (grain + panel + _detail(ou, ov, pattern_seed))
        shaded = colour[hit] * (1.0 + offset)[:, None] + 60.0 * offset[:, None]
        if look.furnished:
            shaded = furniture.furnish(obj.kind, local, face, obj.size, shaded, pattern_seed)
        rgb[hit] = shaded
    for picture in look.pictures:
        on_wall = (
            walls
            & (axis == picture.axis)
            & (np.abs(points[:, picture.axis] - picture.offset) < 1e-3)
        )
        inside = on_wall & (np.abs(u - picture.centre[0]) <= picture.size[0] / 2)
        inside &= np.abs(z - picture.centre[1]) <= picture.size[1] / 2
        index = np.flatnonzero(inside)
        if len(index):
            rgb[index] = _picture(u[index], z[index], picture)
    lambert = look.ambient + (1 - look.ambient) * np.abs(normals @ look.light)
    return rgb * lambert[:, None]
