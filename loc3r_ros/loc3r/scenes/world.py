"""Procedural indoor scenes: a box room with named, coloured furniture, deterministic from a seed.

World frame: right-handed, z up, metres, floor at z = 0, the room spanning [0, W] x [0, D].
Objects are boxes rotated about z (yaw), resting on the floor (or on a wall, for windows, doors
and TVs). Placement avoids overlaps on the floor plan with a clearance margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
    "white": (235, 235, 235),
    "black": (35, 35, 35),
    "brown": (120, 75, 40),
    "grey": (128, 128, 128),
    "orange": (235, 130, 30),
    "purple": (120, 50, 160),
}


@dataclass(frozen=True)
class Kind:
    """A furniture type: size ranges (metres) and where it goes."""

    name: str
    width: tuple[float, float]  # along the object's own x
    depth: tuple[float, float]  # along its own y
    height: tuple[float, float]
    on_wall: bool = False  # windows, doors, TVs hang on / stand against a wall
    elevation: tuple[float, float] = (0.0, 0.0)  # bottom height for wall items
    colours: tuple[str, ...] = tuple(COLOURS)


CATALOGUE: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("bed", (1.4, 2.0), (1.9, 2.2), (0.45, 0.6), colours=("white", "blue", "grey", "red")),
        Kind("sofa", (1.6, 2.2), (0.8, 1.0), (0.7, 0.9)),
        Kind("table", (0.8, 1.6), (0.7, 1.0), (0.7, 0.8), colours=("brown", "white", "black")),
        Kind("chair", (0.45, 0.55), (0.45, 0.55), (0.8, 1.0)),
        Kind("desk", (1.0, 1.5), (0.6, 0.8), (0.72, 0.78), colours=("brown", "white", "black")),
        Kind("cabinet", (0.6, 1.2), (0.4, 0.6), (0.8, 1.6)),
        Kind("shelf", (0.6, 1.0), (0.3, 0.4), (1.5, 2.0), colours=("brown", "white", "black")),
        Kind("lamp", (0.3, 0.4), (0.3, 0.4), (1.3, 1.7), colours=("yellow", "white", "black")),
        Kind("plant", (0.4, 0.6), (0.4, 0.6), (0.6, 1.2), colours=("green",)),
        Kind(
            "tv",
            (1.0, 1.4),
            (0.08, 0.12),
            (0.6, 0.8),
            on_wall=True,
            elevation=(0.8, 1.1),
            colours=("black",),
        ),
        Kind(
            "window",
            (1.0, 1.6),
            (0.05, 0.06),
            (1.0, 1.3),
            on_wall=True,
            elevation=(0.9, 1.1),
            colours=("white",),
        ),
        Kind(
            "door", (0.8, 0.9), (0.05, 0.06), (2.0, 2.1), on_wall=True, colours=("brown", "white")
        ),
    )
}

ROOM_EXTENT = (3.5, 7.0)  # width and depth are drawn from this range, metres
EVERY_ROOM = ("window", "door", "bed", "chair", "table")  # kinds every room has (one each) ...
ONCE_PER_ROOM = ("window", "door")  # ... of which these are never added again
NUM_OBJECTS = (5, 9)  # generate_room plans rng.integers(*num_objects) + 1 objects: 6 to 9


@dataclass
class SceneObject:
    """One placed object: an oriented box."""

    id: int
    kind: str
    colour: str
    centre: tuple[float, float, float]  # box centre, metres (world)
    size: tuple[float, float, float]  # full extents along the box's own x, y, z
    yaw: float  # radians about z

    @property
    def label(self) -> str:
        """E.g. 'red chair'."""
        return f"{self.colour} {self.kind}"

    def footprint(self) -> np.ndarray:
        """(4, 2) floor-plan corners."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        hx, hy = self.size[0] / 2, self.size[1] / 2
        local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
        return local @ np.array([[c, s], [-s, c]]) + np.array(self.centre[:2])


@dataclass
class Room:
    """A box room and its objects."""

    width: float  # x extent, metres
    depth: float  # y extent, metres
    height: float
    wall_colour: str
    floor_colour: str
    objects: list[SceneObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Room:
        """Inverse of to_dict."""
        objects = [SceneObject(**o) for o in data["objects"]]
        return cls(**{**data, "objects": objects})


def _overlaps(poly_a: np.ndarray, poly_b: np.ndarray, margin: float) -> bool:
    """Separating-axis test of two convex floor polygons grown by `margin`."""
    for poly in (poly_a, poly_b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]]) / (np.linalg.norm(edge) + 1e-12)
            a, b = poly_a @ axis, poly_b @ axis
            if a.max() + margin <= b.min() or b.max() + margin <= a.min():
                return False
    return True


def generate_room(seed: int, num_objects: tuple[int, int] = NUM_OBJECTS) -> Room:
    """A random furnished room (deterministic from `seed`)."""
    rng = np.random.default_rng(seed)
    room = Room(
        width=float(rng.uniform(*ROOM_EXTENT)),
        depth=float(rng.uniform(*ROOM_EXTENT)),
        height=float(rng.uniform(2.5, 3.0)),
        wall_colour=str(rng.choice(["white", "grey", "yellow", "blue"])),
        floor_colour=str(rng.choice(["brown", "grey", "white"])),
    )
    wanted = list(EVERY_ROOM)
    others = [k for k in CATALOGUE if k not in ONCE_PER_ROOM]
    extra = rng.choice(others, int(rng.integers(*num_objects)) - len(wanted) + 1)
    wanted += [str(k) for k in extra]
    footprints: list[np.ndarray] = []
    for kind_name in wanted:
        kind = CATALOGUE[kind_name]
        for _ in range(60):  # tries
            size = (float(rng.uniform(*kind.width)), float(rng.uniform(*kind.depth)),
                    float(rng.uniform(*kind.height)))  # fmt: skip
            if kind.on_wall:
                wall = int(rng.integers(4))
                yaw = [0.0, np.pi / 2, np.pi, -np.pi / 2][wall]  # object's +y faces the room
                along = (room.width if wall in (0, 2) else room.depth) - size[0] - 0.4
                if along <= 0:
                    continue
                t = float(rng.uniform(0.2 + size[0] / 2, 0.2 + size[0] / 2 + along))
                inset = size[1] / 2
                x, y = {
                    0: (t, inset),
                    1: (room.width - inset, t),
                    2: (room.width - t, room.depth - inset),
                    3: (inset, room.depth - t),
                }[wall]
                z = float(rng.uniform(*kind.elevation)) + size[2] / 2
            else:
                yaw = float(rng.choice([0.0, np.pi / 2, rng.uniform(-np.pi, np.pi)]))
                margin = max(size[0], size[1]) / 2 + 0.1
                x = float(rng.uniform(margin, room.width - margin))
                y = float(rng.uniform(margin, room.depth - margin))
                z = size[2] / 2
            candidate = SceneObject(len(room.objects), kind_name, str(rng.choice(kind.colours)),
                                    (x, y, z), size, yaw)  # fmt: skip
            poly = candidate.footprint()
            inside = (
                (poly[:, 0] >= -1e-6).all()
                and (poly[:, 0] <= room.width + 1e-6).all()
                and ((poly[:, 1] >= -1e-6).all() and (poly[:, 1] <= room.depth + 1e-6).all())
            )
            clear = 0.05 if kind.on_wall else 0.35  # leave walking space between furniture
            if inside and not any(_overlaps(poly, other, clear) for other in footprints):
                room.objects.append(candidate)
                footprints.append(poly)
                break
    return room


def free_floor_points(room: Room, rng: np.random.Generator, count: int, clearance: float = 0.4):
    """Up to `count` random floor points at least `clearance` from walls and object footprints."""
    points = []
    for _ in range(count * 50):
        p = rng.uniform([clearance, clearance], [room.width - clearance, room.depth - clearance])
        probe = np.array(
            [
                [p[0] - clearance, p[1] - clearance],
                [p[0] + clearance, p[1] - clearance],
                [p[0] + clearance, p[1] + clearance],
                [p[0] - clearance, p[1] + clearance],
            ]
        )
        if not any(_overlaps(probe, o.footprint(), 0.0) for o in room.objects):
            points.append(p)
            if len(points) == count:
                break
    return np.array(points).reshape(-1, 2)


def distance_to_footprint(obj: SceneObject, points: np.ndarray) -> np.ndarray:
    """(N,) floor-plan distance of (N, 2) points from the object's footprint (0 inside it)."""
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    local = (np.asarray(points, dtype=float) - np.array(obj.centre[:2])) @ np.array(
        [[c, -s], [s, c]]
    )  # the footprint's own axes (footprint() rotates the other way)
    outside = np.maximum(np.abs(local) - np.array(obj.size[:2]) / 2, 0.0)
    return np.linalg.norm(outside, axis=-1)


def floor_points_near(
    room: Room,
    obj: SceneObject,
    rng: np.random.Generator,
    count: int,
    reach: float,
    clearance: float = 0.3,
) -> np.ndarray:
    """Up to `count` random floor points within `reach` of `obj`'s footprint.

    Each is at least `clearance` from the walls and from every footprint (`obj`'s too). `reach`
    is measured from the footprint, so "next to" the bed is as close to the bed's edge as "next
    to" the chair is to the chair's.
    """
    corners = obj.footprint()
    low = np.maximum(corners.min(axis=0) - reach, clearance)
    high = np.minimum(corners.max(axis=0) + reach, [room.width - clearance, room.depth - clearance])
    if (high <= low).any():
        return np.zeros((0, 2))
    points: list[np.ndarray] = []
    for _ in range(count * 50):
        p = rng.uniform(low, high)
        if distance_to_footprint(obj, p[None])[0] > reach:
            continue
        if all(distance_to_footprint(o, p[None])[0] >= clearance for o in room.objects):
            points.append(p)
            if len(points) == count:
                break
    return np.array(points).reshape(-1, 2)
