"""What the situation's words allow: the best a model that saw the room perfectly could do.

"I am standing next to the bed, facing the window" does not say on which side of the bed:
`make_situation` put the agent at a random floor point within NEXT_TO_REACH of the bed's
footprint (STANDING_CLEARANCE from walls and furniture, MIN_TARGET_DISTANCE from the window's
centre), facing the window's centre; "sitting on the bed" puts it at the bed's centre. Nor does
"the green plant" say which, when a room has two. The true pose is one draw of that distribution,
so even perfect perception of the room leaves some answers open.

The ceiling answers each synthetic question from the true room and the words alone: for every
(anchor, target) pair of objects the words fit (equally likely, as make_situation draws them),
it draws the positions they allow (uniform over the same region, as the generator's rejection
sampling is), computes each one's answer the way `make_questions` does (the agent facing its
target from there), and answers the most frequent. Its pose is scored per threshold, each with
the guess that threshold rewards: the point (of a 0.1 m grid, the allowed positions and the
anchors' centres) with the most allowed positions within that distance, the heading (of a 1°
grid and the allowed ones) with the most allowed headings within that angle. `loc3r eval` and
`python -m loc3r.eval.bounds` report it next to random and majority. Synthetic rooms only (a
dataset's rooms are not known to it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loc3r.eval.localization import (
    METRIC_NAMES,
    POSITION_THRESHOLDS_M,
    ROTATION_THRESHOLDS_DEG,
    angle_error_deg,
    position_error,
)
from loc3r.eval.report import (
    EvalCase,
    EvalInputError,
    aggregate_answers,
    score_answers,
)
from loc3r.scenes.situations import (
    MIN_TARGET_DISTANCE,
    NEXT_TO_REACH,
    SITTABLE,
    STANDING_CLEARANCE,
    QARecord,
    closest_on_side,
    nearest_object,
    relative_direction,
    unique_label,
)
from loc3r.scenes.world import Room, SceneObject, distance_to_footprint, generate_room

POSITIONS = 256  # allowed positions drawn per (anchor, target) pair the words fit
DRAWS_PER_ROUND = 4096  # uniform candidates per rejection round
MAX_ROUNDS = 8
FIELDS = ("anchor_id", "target_id", "world_position", "world_yaw")  # what make_episode writes


class CeilingInputError(ValueError):
    """A record the ceiling cannot place (not a situation of `make_situation`)."""


@dataclass
class CeilingCase:
    """The ceiling's answer to one question (`case`) and its pose's errors, threshold by threshold.

    case.pred_positions / pred_yaws hold the guess densest at the strictest thresholds (BEV);
    position_errors (metres) and heading_errors (degrees) are those of the guess made for each
    threshold of POSITION_THRESHOLDS_M and ROTATION_THRESHOLDS_DEG, in that order.
    """

    case: EvalCase
    position_errors: tuple[float, ...]
    heading_errors: tuple[float, ...]


@dataclass
class Hypotheses:
    """The poses a situation's words allow: positions (N, 2) world, headings (N,), their pairs."""

    positions: np.ndarray
    headings: np.ndarray
    anchors: np.ndarray  # (N,) the anchor id each position was drawn for
    targets: np.ndarray  # (N,) the target id


def allowed_positions(
    room: Room, anchor: SceneObject, target: SceneObject, sitting: bool, seed: int
) -> np.ndarray:
    """(N, 2) world positions the words allow for one pair, uniform over their region.

    Sitting: the anchor's centre alone. Standing: within NEXT_TO_REACH of the anchor's footprint,
    STANDING_CLEARANCE from the walls and every footprint, MIN_TARGET_DISTANCE from the target's
    centre (make_situation's rules); N <= POSITIONS, 0 when no point qualifies.
    """
    if sitting:
        if math.dist(anchor.centre[:2], target.centre[:2]) < MIN_TARGET_DISTANCE:
            return np.zeros((0, 2))
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


def hypotheses(room: Room, situation: str, seed: int) -> Hypotheses:
    """Every pose `situation` allows in `room`: each (anchor, target) pair whose words it is.

    Equal numbers of positions per pair that has any (the generator draws pairs uniformly).
    Raises CeilingInputError when no pair of the room fits the words.
    """
    labels = [unique_label(room, obj) for obj in room.objects]
    parts: list[tuple[np.ndarray, int, int]] = []
    for a, anchor in enumerate(room.objects):
        for t, target in enumerate(room.objects):
            if a == t:
                continue
            for verb in ("sitting on", "standing next to"):
                if verb == "sitting on" and anchor.kind not in SITTABLE:
                    continue
                if situation != f"I am {verb} {labels[a]}, facing {labels[t]}":
                    continue
                points = allowed_positions(
                    room, anchor, target, verb == "sitting on", seed * 1009 + a * 31 + t
                )
                if len(points):
                    parts.append((points, anchor.id, target.id))
    if not parts:
        raise CeilingInputError(f"no pair of objects fits {situation!r}")
    each = min(len(points) for points, _, _ in parts) if len(parts) > 1 else len(parts[0][0])
    positions = np.concatenate([points[:each] for points, _, _ in parts])
    anchors = np.concatenate([np.full(each, a) for _, a, _ in parts])
    targets = np.concatenate([np.full(each, t) for _, _, t in parts])
    centres = np.array([room.objects[t].centre[:2] for t in targets])
    towards = centres - positions
    return Hypotheses(positions, np.arctan2(towards[:, 1], towards[:, 0]), anchors, targets)


def answer_at(
    room: Room, record: QARecord, position, yaw: float, anchor_id: int, target_id: int
) -> str | None:
    """`record`'s answer for an agent at `position` (world) facing `yaw`, as make_questions gives.

    anchor_id and target_id: the objects the agent is at and faces. None for a what-side
    question with nothing on that side from there.
    """
    fields = record.fields
    kind = record.question_type
    if kind == "direction":
        return relative_direction(position, yaw, room.objects[fields["object_id"]].centre[:2])
    if kind == "nearest":
        return nearest_object(room, position, anchor_id).kind
    if kind == "what_side":
        closest = closest_on_side(room, position, yaw, fields["side"])
        return None if closest is None else closest.kind
    if kind == "distance":
        return str(round(math.dist(position, room.objects[target_id].centre[:2])))
    return record.answers[0]  # colour, counting: the pose does not change them


GRID_M = 0.1  # candidate positions: the allowed ones, the anchors' centres and a grid this fine
GRID_DEG = 1.0  # candidate headings: the allowed ones and a grid this fine


def densest_position(positions: np.ndarray, radius: float, extra: np.ndarray) -> np.ndarray:
    """The point with the most of (N, 2) `positions` within `radius` (strictly).

    Candidates: the positions, the (M, 2) `extra` points (the anchors' centres: around a small
    object every allowed position may be within 1 m of its centre, which is not allowed itself)
    and a GRID_M grid over their bounding box.
    """
    low, high = positions.min(0) - radius, positions.max(0) + radius
    xs, ys = (np.arange(lo, hi + GRID_M, GRID_M) for lo, hi in zip(low, high, strict=True))
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    candidates = np.concatenate([positions, extra, grid])
    near = np.linalg.norm(candidates[:, None] - positions[None], axis=-1) < radius
    return candidates[int(near.sum(1).argmax())]


def densest_heading(headings: np.ndarray, degrees: float) -> float:
    """The heading (radians) with the most of (N,) `headings` within `degrees` (strictly).

    Candidates: the headings and a GRID_DEG grid around the circle.
    """
    grid = np.radians(np.arange(-180.0, 180.0, GRID_DEG))
    candidates = np.concatenate([headings, grid])
    turn = np.remainder(candidates[:, None] - headings[None] + math.pi, 2 * math.pi) - math.pi
    return float(candidates[int((np.degrees(np.abs(turn)) < degrees).sum(1).argmax())])


def _to_bev(record: QARecord, world_xy: np.ndarray, world_yaw: float) -> tuple[list, float]:
    """A world pose in the record's BEV frame (the rigid motion taking its true pose there)."""
    turn = record.yaw - record.fields["world_yaw"]
    c, s = math.cos(turn), math.sin(turn)
    rotation = np.array([[c, -s], [s, c]])
    shift = np.array(record.position) - rotation @ np.array(record.fields["world_position"])
    xy = rotation @ np.asarray(world_xy, dtype=float) + shift
    return [float(v) for v in xy], math.remainder(world_yaw + turn, 2 * math.pi)


def ceiling_cases(
    seed: int, records: Sequence[QARecord], room: Room | None = None
) -> list[CeilingCase]:
    """The ceiling of each record of the synthetic room `seed` (case ids as predict_cases').

    `room` defaults to generate_room(seed), the room make_episode renders. Raises
    CeilingInputError for a record without make_episode's fields or words no pair fits.
    """
    room = room if room is not None else generate_room(seed)
    poses: dict[str, Hypotheses] = {}
    guessed: dict[str, tuple[list[np.ndarray], list[float]]] = {}
    out = []
    for index, record in enumerate(records):
        missing = set(FIELDS) - set(record.fields)
        if missing:
            raise CeilingInputError(f"record {index} of room {seed} lacks {sorted(missing)}")
        if record.situation not in poses:
            try:
                poses[record.situation] = hypotheses(room, record.situation, seed)
            except CeilingInputError as error:
                raise CeilingInputError(f"room {seed}: {error}") from None
        h = poses[record.situation]
        votes = Counter(
            answer_at(room, record, p, y, int(a), int(t))
            for p, y, a, t in zip(h.positions, h.headings, h.anchors, h.targets, strict=True)
        )
        votes.pop(None, None)
        answer = votes.most_common(1)[0][0] if votes else ""  # nothing on that side anywhere
        truth_xy = np.array(record.fields["world_position"])
        truth_yaw = record.fields["world_yaw"]
        if record.situation not in guessed:  # the guesses depend on the words alone
            centres = np.array([room.objects[a].centre[:2] for a in np.unique(h.anchors)])
            guessed[record.situation] = (
                [densest_position(h.positions, r, centres) for r in POSITION_THRESHOLDS_M],
                [densest_heading(h.headings, d) for d in ROTATION_THRESHOLDS_DEG],
            )
        guesses, turns = guessed[record.situation]
        xy, yaw = _to_bev(record, guesses[0], turns[0])
        case = EvalCase(
            id=f"{seed}-{index}", question=record.question, prediction=answer,
            references=list(record.answers), question_type=record.question_type,
            scene_id=f"synthetic-{seed}", gt_position=[float(v) for v in record.position],
            gt_yaw=float(record.yaw), pred_positions=[xy], pred_yaws=[yaw],
        )  # fmt: skip
        out.append(
            CeilingCase(
                case,
                tuple(position_error(truth_xy, g) for g in guesses),
                tuple(angle_error_deg(t, truth_yaw) for t in turns),
            )
        )
    return out


def episodes_ceiling(episodes: Sequence) -> list[CeilingCase] | None:
    """The ceiling of rendered synthetic episodes (EpisodeData), in predict_cases' order.

    None when a record is not a synthetic room's (a dataset's scenes are not known here).
    """
    if not all(set(FIELDS) <= set(r.fields) for e in episodes for r in e.records):
        return None
    return [case for e in episodes for case in ceiling_cases(e.seed, e.records)]


def ceiling_report(
    ceiling: Sequence[CeilingCase],
    cases: Sequence[EvalCase],
    answer_variant: str = "leo",
    localization_variant: str = "sqa3d",
) -> dict:
    """The report's "ceiling" part: its answers scored as the model's `cases`, and its poses.

    Each pose metric is the share of questions whose guess for that threshold is within it
    (``view2cap`` inclusive, as its metric is). Raises EvalInputError when the ceiling's
    questions are not the model's.
    """
    if [c.case.id for c in ceiling] != [c.id for c in cases]:
        raise EvalInputError("the ceiling's cases are not the model's questions")
    answered = [c.case for c in ceiling]
    below = np.less_equal if localization_variant == "view2cap" else np.less
    errors = np.array([c.position_errors + c.heading_errors for c in ceiling]).reshape(
        len(ceiling), len(METRIC_NAMES)
    )
    thresholds = np.array([*POSITION_THRESHOLDS_M, *ROTATION_THRESHOLDS_DEG])
    hits = below(errors, thresholds).mean(0) if len(ceiling) else np.zeros(len(METRIC_NAMES))
    return {
        "answers": aggregate_answers(
            answered, score_answers(answered, answer_variant), answer_variant
        ),
        "localization": {
            "n": len(ceiling),
            **{name: float(v) for name, v in zip(METRIC_NAMES, hits, strict=True)},
            "median_pos_err_m": float(np.median(errors[:, 0])) if len(ceiling) else None,
            "median_rot_err_deg": float(np.median(errors[:, 2])) if len(ceiling) else None,
        },
    }
