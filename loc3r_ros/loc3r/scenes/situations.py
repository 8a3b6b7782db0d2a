"""Situations and questions computed from the room's geometry, so answers are right by construction.

A situation places an agent: "I am standing next to the red chair, facing the window" gives the
agent's position (x, y) and heading yaw (world frame, radians CCW about +z from +x). Questions
are asked from that viewpoint: relative direction (left / right / in front / behind), nearest
object, colour, counting, distance, room size. Each record carries its question_type and the
structured fields the answer came from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from loc3r.scenes.world import (
    CATALOGUE,
    EVERY_ROOM,
    NUM_OBJECTS,
    ONCE_PER_ROOM,
    ROOM_EXTENT,
    Room,
    SceneObject,
    floor_points_near,
)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SITTABLE = {"bed", "sofa", "chair"}
DIRECTIONS = ("in front", "left", "behind", "right")  # what relative_direction answers
MIN_TARGET_DISTANCE = 0.5  # metres: a situation faces an object at least this far away
# metres from the anchor's footprint: "standing next to the bed" is within this of its edge (and,
# like every standing point, at least STANDING_CLEARANCE from walls and every footprint)
NEXT_TO_REACH = 0.5
STANDING_CLEARANCE = 0.3


@dataclass
class Situated:
    """An agent pose described in words."""

    text: str
    position: tuple[float, float]  # world x, y (metres)
    yaw: float  # world heading (radians)
    anchor_id: int
    target_id: int


@dataclass
class QARecord:
    """One situated question with its answer (world frame; see dataset.py for the BEV frame)."""

    question_type: str
    situation: str
    question: str
    answers: list[str]
    position: tuple[float, float]
    yaw: float
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly."""
        return asdict(self)


def relative_direction(position, yaw: float, point) -> str:
    """Where `point` is for an agent at `position` facing `yaw`: front, left, behind or right."""
    dx, dy = point[0] - position[0], point[1] - position[1]
    angle = math.remainder(math.atan2(dy, dx) - yaw, 2 * math.pi)  # CCW from the heading
    front, left, behind, right = DIRECTIONS
    if abs(angle) <= math.pi / 4:
        return front
    if abs(angle) >= 3 * math.pi / 4:
        return behind
    return left if angle > 0 else right


def unique_label(room: Room, obj: SceneObject) -> str:
    """'the chair' when it is the only chair, else 'the red chair'."""
    same = [o for o in room.objects if o.kind == obj.kind]
    return f"the {obj.kind}" if len(same) == 1 else f"the {obj.label}"


def make_situation(room: Room, rng: np.random.Generator) -> Situated | None:
    """A random situation: next to / sitting on an object, facing another one."""
    if len(room.objects) < 2:
        return None
    anchor, target = rng.choice(len(room.objects), 2, replace=False)
    anchor, target = room.objects[int(anchor)], room.objects[int(target)]
    if anchor.kind in SITTABLE and rng.random() < 0.4:
        position = np.array(anchor.centre[:2])
        verb = "sitting on"
    else:
        candidates = floor_points_near(room, anchor, rng, 1, NEXT_TO_REACH, STANDING_CLEARANCE)
        if len(candidates) == 0:
            return None
        position = candidates[0]
        verb = "standing next to"
    to_target = np.array(target.centre[:2]) - position
    if np.linalg.norm(to_target) < MIN_TARGET_DISTANCE:
        return None
    yaw = math.atan2(to_target[1], to_target[0])
    text = f"I am {verb} {unique_label(room, anchor)}, facing {unique_label(room, target)}"
    return Situated(text, (float(position[0]), float(position[1])), yaw, anchor.id, target.id)


def nearest_object(room: Room, position, anchor_id: int) -> SceneObject:
    """The object nearest to `position` (centre distance), the anchor the agent is at left out."""
    return min(
        (o for o in room.objects if o.id != anchor_id),
        key=lambda o: math.dist(position, o.centre[:2]),
    )


def closest_on_side(room: Room, position, yaw: float, side: str) -> SceneObject | None:
    """The nearest object on the agent's `side` ("left", "right", "behind"); None if none is."""
    on_side = [o for o in room.objects if relative_direction(position, yaw, o.centre[:2]) == side]
    return min(on_side, key=lambda o: math.dist(position, o.centre[:2]), default=None)


def make_questions(room: Room, situated: Situated, rng: np.random.Generator) -> list[QARecord]:
    """Questions from the situated viewpoint (one per type where the geometry allows)."""
    records: list[QARecord] = []
    pos, yaw = situated.position, situated.yaw

    def add(question_type: str, question: str, answer: str, **fields) -> None:
        records.append(QARecord(question_type, situated.text, question, [answer], pos, yaw, fields))

    others = [o for o in room.objects if o.id not in (situated.anchor_id, situated.target_id)]
    distinct = [o for o in others if sum(p.kind == o.kind for p in room.objects) == 1]
    if distinct:
        obj = distinct[int(rng.integers(len(distinct)))]
        direction = relative_direction(pos, yaw, obj.centre[:2])
        add("direction", f"Is the {obj.kind} on my left, on my right, in front of me or behind me?",
            direction, object_id=obj.id)  # fmt: skip
    nearest = nearest_object(room, pos, situated.anchor_id)
    add("nearest", "What is the closest object to me?", nearest.kind, object_id=nearest.id)
    side = str(rng.choice(["left", "right", "behind"]))
    closest = closest_on_side(room, pos, yaw, side)
    if closest is not None:
        phrase = "behind me" if side == "behind" else f"on my {side}"
        add("what_side", f"What is the closest object {phrase}?", closest.kind,
            object_id=closest.id, side=side)  # fmt: skip
    if distinct:
        obj = distinct[int(rng.integers(len(distinct)))]
        add("colour", f"What colour is the {obj.kind}?", obj.colour, object_id=obj.id)
    kinds = sorted({o.kind for o in room.objects})
    kind = str(rng.choice(kinds))
    count = sum(o.kind == kind for o in room.objects)
    plural = "shelves" if kind == "shelf" else f"{kind}s"
    add("counting", f"How many {plural} are in the room?", NUMBER_WORDS[count], object_kind=kind,
        count=count)  # fmt: skip
    target = room.objects[situated.target_id]
    metres = math.dist(pos, target.centre[:2])
    add("distance", f"How far am I from the {target.kind}, in metres?", str(round(metres)),
        object_id=target.id, metres=metres)  # fmt: skip
    return records


def answer_vocabulary(num_objects: tuple[int, int] = NUM_OBJECTS) -> frozenset[str]:
    """Every answer make_questions can give in rooms of generate_room (a closed set of 41).

    direction: DIRECTIONS; nearest / what_side: an object kind; colour: a colour some kind comes
    in; counting: one up to the most objects of one kind a room can plan (a kind every room has
    plus all the extras: five with the default `num_objects`); distance: whole metres from 1 to
    the room diagonal's round(hypot(7, 7)) = 10 (round() of a distance >= MIN_TARGET_DISTANCE is
    0 only at exactly 0.5 m, which is left out). The rarest (five, 8, 9, 10) did not occur in
    3000 rooms (4 situation draws each); every answer that did is in the set.
    """
    extras = num_objects[1] - len(EVERY_ROOM)  # rng.integers excludes the upper bound
    most = max(
        (kind in EVERY_ROOM) + (0 if kind in ONCE_PER_ROOM else extras) for kind in CATALOGUE
    )
    longest = round(math.hypot(ROOM_EXTENT[1], ROOM_EXTENT[1]))
    return frozenset(
        [
            *DIRECTIONS,
            *CATALOGUE,
            *(colour for kind in CATALOGUE.values() for colour in kind.colours),
            *NUMBER_WORDS[1 : most + 1],
            *(str(metres) for metres in range(1, longest + 1)),
        ]
    )
