"""What the situation's words allow: the best a model that saw the room perfectly could do.

"I am standing next to the bed, facing the window" does not say on which side of the bed:
`make_situation` put the agent at a random floor point within NEXT_TO_REACH of the bed's
footprint (STANDING_CLEARANCE from walls and furniture, MIN_TARGET_DISTANCE from the window's
centre), facing the window's centre; "sitting on the bed" puts it at the bed's centre. The true
pose is one draw of that distribution, so even perfect perception of the room leaves the answer
to "is the lamp on my left?" open when the lamp is close.

The ceiling answers each synthetic question from the true room and the words alone: it draws the
positions the words allow (uniform over the same region, as the generator's rejection sampling
is), computes each one's answer the way `make_questions` does (the agent facing the target from
there), and answers the most frequent. Its pose is the allowed position with the most allowed
positions within 0.5 m (their densest point), facing the target's centre. `loc3r eval` scores
these cases like the model's, next to random and majority: a model's answers and poses can only
approach it. Synthetic rooms only (a dataset's rooms are not known to it).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from loc3r.eval.report import EvalCase
from loc3r.scenes.situations import (
    MIN_TARGET_DISTANCE,
    NEXT_TO_REACH,
    STANDING_CLEARANCE,
    QARecord,
    closest_on_side,
    nearest_object,
    relative_direction,
)
from loc3r.scenes.world import Room, SceneObject, distance_to_footprint, generate_room

POSITIONS = 256  # allowed positions drawn per situation
DRAWS_PER_ROUND = 4096  # uniform candidates per rejection round
MAX_ROUNDS = 8
DENSEST_RADIUS_M = 0.5  # the pose's position: the allowed one with the most others this close


class CeilingInputError(ValueError):
    """A record the ceiling cannot place (not a situation of `make_situation`)."""


def allowed_positions(
    room: Room, anchor: SceneObject, target: SceneObject, sitting: bool, seed: int
) -> np.ndarray:
    """(N, 2) world positions the words allow, uniform over their region (N <= POSITIONS).

    Sitting: the anchor's centre alone. Standing: within NEXT_TO_REACH of the anchor's footprint,
    STANDING_CLEARANCE from the walls and every footprint, MIN_TARGET_DISTANCE from the target's
    centre (make_situation's rules). Empty when no point qualifies.
    """
    if sitting:
        return np.array([anchor.centre[:2]], dtype=float)
    corners = anchor.footprint()
    low = np.maximum(corners.min(axis=0) - NEXT_TO_REACH, STANDING_CLEARANCE)
    high = np.minimum(
        corners.max(axis=0) + NEXT_TO_REACH,
        [room.width - STANDING_CLEARANCE, room.depth - STANDING_CLEARANCE],
    )
    if (high <= low).any():
        return np.zeros((0, 2))
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(MAX_ROUNDS):
        points = rng.uniform(low, high, size=(DRAWS_PER_ROUND, 2))
        ok = distance_to_footprint(anchor, points) <= NEXT_TO_REACH
        for obj in room.objects:
            ok &= distance_to_footprint(obj, points) >= STANDING_CLEARANCE
        ok &= np.linalg.norm(points - np.array(target.centre[:2]), axis=1) >= MIN_TARGET_DISTANCE
        kept.append(points[ok])
        total += int(ok.sum())
        if total >= POSITIONS:
            break
    return np.concatenate(kept)[:POSITIONS]


def answer_at(room: Room, record: QARecord, position, yaw: float) -> str | None:
    """`record`'s answer for an agent at `position` (world) facing `yaw`, as make_questions gives.

    None for a what-side question with nothing on that side from there.
    """
    fields = record.fields
    kind = record.question_type
    if kind == "direction":
        return relative_direction(position, yaw, room.objects[fields["object_id"]].centre[:2])
    if kind == "nearest":
        return nearest_object(room, position, fields["anchor_id"]).kind
    if kind == "what_side":
        closest = closest_on_side(room, position, yaw, fields["side"])
        return None if closest is None else closest.kind
    if kind == "distance":
        return str(round(math.dist(position, room.objects[fields["target_id"]].centre[:2])))
    return record.answers[0]  # colour, counting: the pose does not change them


def _densest(points: np.ndarray) -> np.ndarray:
    """The point of (N, 2) `points` with the most others within DENSEST_RADIUS_M."""
    near = np.linalg.norm(points[:, None] - points[None], axis=-1) < DENSEST_RADIUS_M
    return points[int(near.sum(1).argmax())]


def _to_bev(record: QARecord, world_xy: np.ndarray, world_yaw: float) -> tuple[list, float]:
    """A world pose in the record's BEV frame (the rigid motion taking its true pose there)."""
    turn = record.yaw - record.fields["world_yaw"]
    c, s = math.cos(turn), math.sin(turn)
    rotation = np.array([[c, -s], [s, c]])
    shift = np.array(record.position) - rotation @ np.array(record.fields["world_position"])
    xy = rotation @ world_xy + shift
    return [float(v) for v in xy], math.remainder(world_yaw + turn, 2 * math.pi)


def ceiling_cases(
    seed: int, records: Sequence[QARecord], room: Room | None = None
) -> list[EvalCase]:
    """The ceiling's case for each record of the synthetic room `seed` (ids as predict_cases').

    `room` defaults to generate_room(seed), the room make_episode renders. Raises
    CeilingInputError for a record without make_episode's fields or a situation it cannot place.
    """
    room = room if room is not None else generate_room(seed)
    by_situation: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cases = []
    for index, record in enumerate(records):
        fields = record.fields
        missing = {"anchor_id", "target_id", "world_position", "world_yaw"} - set(fields)
        if missing:
            raise CeilingInputError(f"record {index} of room {seed} lacks {sorted(missing)}")
        anchor, target = room.objects[fields["anchor_id"]], room.objects[fields["target_id"]]
        if record.situation not in by_situation:
            sitting = " sitting on " in record.situation
            key = zlib.crc32(f"{seed}\n{record.situation}".encode())
            points = allowed_positions(room, anchor, target, sitting, key)
            if len(points) == 0:
                raise CeilingInputError(f"room {seed}: no position fits {record.situation!r}")
            towards = np.array(target.centre[:2]) - points
            by_situation[record.situation] = (points, np.arctan2(towards[:, 1], towards[:, 0]))
        points, yaws = by_situation[record.situation]
        votes = Counter(answer_at(room, record, p, y) for p, y in zip(points, yaws, strict=True))
        votes.pop(None, None)
        answer = votes.most_common(1)[0][0] if votes else ""  # nothing on that side anywhere
        guess = _densest(points)
        towards = np.array(target.centre[:2]) - guess
        xy, yaw = _to_bev(record, guess, math.atan2(towards[1], towards[0]))
        cases.append(
            EvalCase(
                id=f"{seed}-{index}", question=record.question, prediction=answer,
                references=list(record.answers), question_type=record.question_type,
                scene_id=f"synthetic-{seed}", gt_position=[float(v) for v in record.position],
                gt_yaw=float(record.yaw), pred_positions=[xy], pred_yaws=[yaw],
            )
        )  # fmt: skip
    return cases


def _placeable(record: QARecord) -> bool:
    """Whether a record carries what make_episode writes (a synthetic room's question)."""
    return {"anchor_id", "target_id", "world_position", "world_yaw"} <= set(record.fields)


def episodes_ceiling(episodes: Sequence) -> list[EvalCase] | None:
    """The ceiling's cases of rendered synthetic episodes (EpisodeData), in predict_cases' order.

    None when a record is not a synthetic room's (a dataset's scenes are not known here).
    """
    if not all(_placeable(r) for episode in episodes for r in episode.records):
        return None
    return [case for e in episodes for case in ceiling_cases(e.seed, e.records)]
