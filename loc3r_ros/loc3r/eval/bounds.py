"""Where a trained Loc3R-VLM loses the situation: grounding and layout, measured apart.

    python -m loc3r.eval.bounds [--model DIR] [--seeds 1000000:1000040] [--out bounds.json]
    python -m loc3r.eval.bounds --vlm RUN/vlm --camera-prior oracle  # an oracle run's VLM

Synthetic rooms know which pooled patches show each object and where every patch lies in the BEV
frame, so a situation's position can be read out with the model's parts swapped for the truth
one at a time (Acc@0.5m / Acc@1.0m, SQA3D's strict thresholds, one read-out per situation):
- "f_pos": the model's own position (what `loc3r eval` scores);
- "f_pos head alone" and "pointer alone": f_pos's own (x, y) and the position pointer's, before
  its gate mixes them (loc3r.vlm.position_pointer; both are "f_pos" for a model without it);
- "attended, model layout": the layout head's (x, y) of the video patches, averaged with the
  attention of <Pos>'s grounding head (head 0 of the grounding layer);
- "top attended patch, model layout": the layout of the single patch that head attends to most;
  "attention near its peak, model layout": the attention-weighted layout of the patches within
  PEAK_RADIUS_M of that one's (one object picked, the attention elsewhere in the room left out);
- "anchor, model layout": the same with perfect grounding (the patches that show the anchor);
- "anchor first view, model layout": only the first frame that shows the anchor (frame 1 needs
  no camera pose; later frames need CUT3R's);
- "... input points" (attended, top attended patch, near its peak, anchor): the (x, y) of the
  patches' points as the camera tokens state them (geometry tokens: the pose source and CUT3R's
  depth), in the BEV frame the engine would set up from them; f_pos stands in without them;
- "attended, true layout" and "anchor, true layout": the patches' true (x, y) instead;
- "anchor's centre, truth": the anchor's true centre, in view or not: the most a read-out that
  finds the anchor but not the side of it the agent stands on can score.
A read-out that needs the anchor falls back to f_pos when no frame shows it; f_pos itself is
also reported apart on the situations whose anchor some frame shows and on the others.

The heading, the same way (Acc@15° / Acc@30° and the median error): "pose" (what `loc3r eval`
scores), "f_ori alone" and "pointer alone": f_ori's heading and the heading pointer's bearing
before its gate mixes them (loc3r.vlm.heading_pointer; both are "pose" without it).

Also: the grounding (<Pos>'s attention mass on the anchor, how often its most attended patch
shows it; the answer token's mass on the object a direction question asks about; with the
position pointer, its attention mass on the anchor and its mean gate; with the heading pointer,
its mass on the faced object and its mean gate; for each pointer also how often it puts under
MISSED_MASS on its object: a missed object, not a spread attention), the layout
head's median error per frame and that of the points the camera tokens state (geometry tokens;
with `--camera-prior oracle` the true points, pooled over the whole frame), and the direction
questions answered by geometry from the patches (standing at the anchor, facing the faced
object; "in front", the majority answer, when
one of the three objects is out of view), with the model's grounding and layout, then the true
ones: what an LM reasoning perfectly over what the model grounds and lays out would score. And
from a pose, the model's own (f_pos, f_ori) or the true one, with the object asked about found
by the answer token's attention or by its true patches, over the model's layout: which of the
pose and the grounding a direction answer loses. And the egocentric head's own answer (where it
puts the object asked about, ahead and to the left, read as a direction; "in front" for a model
without the head): whether the answer token's state carries the object's place. And the LM's own
answer (the answer vocabulary's most likely entry, as `loc3r eval` scores it) from the model's
pose and from the true one: with the egocentric read-out (loc3r.vlm.egocentric_readout) the
second is what the answers give once the pose is right; without it the two are the same.

Each table ends with the ceiling (loc3r.eval.text_ceiling): the pose and the direction answer a
model that perceived the room perfectly could give from the situation's words, which leave open
on which side of its anchor a standing agent is.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loc3r.engine.gravity import estimate_up
from loc3r.engine.perception import token_points, token_pose
from loc3r.engine.scene_frame import bev_frame
from loc3r.eval.localization import (
    METRIC_NAMES,
    POSITION_THRESHOLDS_M,
    angle_error_deg,
    position_error,
)
from loc3r.eval.report import print_and_save
from loc3r.eval.text_ceiling import episodes_ceiling
from loc3r.scenes.situations import relative_direction
from loc3r.vlm.training_aids import GROUNDING_HEADS, trace_situation

# a pointer with less of its attention than this on its object missed it (the masses are
# bimodal: on 9900000:9900040 b34 puts under 10 % on the anchor in 12 % of the situations
# and over 70 % in two thirds)
MISSED_MASS = 0.1
# the pose and answer of loc3r.eval.text_ceiling: the situation's words and the true room
CEILING = "the words and the true room (ceiling)"
POSITION_READOUTS = (
    "f_pos",
    "f_pos head alone",
    "pointer alone",
    "attended, model layout",
    "top attended patch, model layout",
    "attention near its peak, model layout",
    "anchor, model layout",
    "anchor first view, model layout",
    "attended, input points",
    "top attended patch, input points",
    "attention near its peak, input points",
    "anchor, input points",
    "attended, true layout",
    "anchor, true layout",
    "anchor's centre, truth",
    CEILING,
)
HEADING_READOUTS = ("pose", "f_ori alone", "pointer alone", CEILING)
HEADING_THRESHOLDS_DEG = (15.0, 30.0)
DIRECTION_READOUTS = (
    "model grounding, model layout",
    "true grounding, model layout",
    "true grounding, true layout",
    "model pose, model grounding",
    "model pose, true object",
    "true pose, model grounding",
    "true pose, true object",
    "egocentric head",
    "LM answer, model pose",
    "LM answer, true pose",
    CEILING,
)
FALLBACK_DIRECTION = "in front"
# "attention near its peak": the attended patches whose layout lies this close to the most
# attended one's (about an object's size): a read-out that picks one object instead of averaging
# the attention over the room
PEAK_RADIUS_M = 0.75
DIRECTION_OBJECTS = ("anchor_id", "target_id", "object_id")  # standing at, facing, asked about
# (query, head) whose attention finds each of those: head 0 of <Pos>, head 1 of <Ori>, head 3 of
# the token before the answer (the first head the grounding loss points at each object)
GROUNDING_OF = {
    name: next((q, h) for q, h, n in GROUNDING_HEADS if n == name)
    for name in ("anchor", "target", "question")
}


def attention_of(trace, name: str) -> torch.Tensor:
    """(P,) attention of the head that finds `name` ("anchor", "target", "question")."""
    query, head = GROUNDING_OF[name]
    return trace.attention[head, query]


def weighted_point(
    weights: torch.Tensor, points: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor | None:
    """(P,) non-negative weights and (P, 2) points -> their weighted mean; None without weight.

    `keep` (P,) bool leaves out points without a value (patches without a true layout).
    """
    w = weights.double()
    if keep is not None:
        w = w * keep.double()
    total = w.sum()
    if not bool(total > 0):
        return None
    return (w / total) @ points.double()


def near_peak(weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(P,) bool: the points within PEAK_RADIUS_M of the most weighted one's (P, 2) point."""
    peak = points[weights.argmax()]
    return (points - peak).norm(dim=-1) <= PEAK_RADIUS_M


def position_readouts(
    trace,
    anchor: torch.Tensor,
    anchor_first: torch.Tensor,
    true_xy: torch.Tensor,
    valid: torch.Tensor,
    anchor_centre: torch.Tensor | None = None,
    input_xy: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every read-out of POSITION_READOUTS but the ceiling's for one situation (a SituationTrace).

    anchor (P,) bool marks the patches that show the anchor, anchor_first those of them in the
    first frame that shows it; true_xy (P, 2) and valid (P,) are the patches' true layout;
    anchor_centre (2,) the anchor's true centre (None: unknown, f_pos stands in); input_xy
    (P, 2) the BEV of the points the camera tokens state (`input_points`; None: no geometry
    tokens).
    """
    own = trace.pose.xy.double()
    attention = attention_of(trace, "anchor")
    on_anchor = anchor.double()
    candidates = {
        "f_pos": own,
        "f_pos head alone": getattr(trace, "head_xy", None),
        "pointer alone": getattr(trace, "pointer_xy", None),
        "attended, model layout": weighted_point(attention, trace.layout),
        "top attended patch, model layout": trace.layout[attention.argmax()].double(),
        "attention near its peak, model layout": weighted_point(
            attention, trace.layout, near_peak(attention, trace.layout)
        ),
        "anchor, model layout": weighted_point(on_anchor, trace.layout),
        "anchor first view, model layout": weighted_point(anchor_first.double(), trace.layout),
        **input_point_readouts(attention, on_anchor, input_xy),
        "attended, true layout": weighted_point(attention, true_xy, valid),
        "anchor, true layout": weighted_point(on_anchor, true_xy, valid),
        "anchor's centre, truth": None if anchor_centre is None else anchor_centre.double(),
    }
    return {name: own if xy is None else xy for name, xy in candidates.items()}


def direction_by_geometry(
    anchor: torch.Tensor,
    target: torch.Tensor,
    obj: torch.Tensor,
    layout: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> str | None:
    """Where `obj` is for an agent at the anchor facing the target, from the patches' layout.

    anchor, target, obj: (P,) weights of the patches (bool cells or attention); each object is
    the weighted mean (x, y) of its patches. None when one is out of view (or the target sits on
    the anchor).
    """
    points = [weighted_point(w.double(), layout, keep) for w in (anchor, target, obj)]
    if any(p is None for p in points):
        return None
    at, facing, point = (p.tolist() for p in points)
    if math.dist(at, facing) < 1e-6:
        return None
    yaw = math.atan2(facing[1] - at[1], facing[0] - at[0])
    return relative_direction(at, yaw, point)


def egocentric_direction(offset: torch.Tensor | None) -> str | None:
    """The direction of an (ahead, left) offset in the agent's frame; None without one."""
    if offset is None:
        return None
    return relative_direction((0.0, 0.0), 0.0, offset.tolist())


def direction_from_pose(
    position, yaw: float, obj: torch.Tensor | None, layout: torch.Tensor
) -> str | None:
    """Where `obj` (P,) patch weights, over the (P, 2) layout, is for an agent at (position, yaw).

    None when the object has no weight (out of view).
    """
    point = None if obj is None else weighted_point(obj.double(), layout)
    return None if point is None else relative_direction(position, yaw, point.tolist())


def input_point_readouts(
    attention: torch.Tensor, on_anchor: torch.Tensor, input_xy: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """The read-outs of the patches' stated points (None each without them).

    Patches whose point is unknown (NaN in `input_xy`) are left out of every read-out.
    """
    names = [n for n in POSITION_READOUTS if n.endswith("input points")]
    if input_xy is None:
        return dict.fromkeys(names)
    known = torch.isfinite(input_xy).all(1)
    xy = torch.nan_to_num(input_xy)  # the unknown points get no weight below
    weights = attention.double() * known
    top = None
    if bool(weights.max() > 0):
        top = xy[weights.argmax()].double()
    return {
        "attended, input points": weighted_point(attention, xy, known),
        "top attended patch, input points": top,
        "attention near its peak, input points": None
        if top is None
        else weighted_point(weights, xy, near_peak(weights, xy)),
        "anchor, input points": weighted_point(on_anchor, xy, known),
    }


def input_points(vlm, episode, patch_index: torch.Tensor) -> torch.Tensor | None:
    """(P, 2) BEV x, y of each patch token's point as its geometry token states it, or None.

    The points are in the first camera's frame; the BEV frame is set up from them the way the
    engine does it (`estimate_up`: the floor fitted to them, else a level first camera). NaN for
    a patch whose cell has no point; None when the camera tokens are not geometry tokens (the
    model has no point embedding).
    """
    if vlm.point_embedding is None or episode.camera_tokens is None:
        return None
    grid = vlm.base.config.pooled_grid
    points = token_points(episode.camera_tokens, grid).reshape(-1, 3).double().numpy()
    poses = [token_pose(token) for token in episode.camera_tokens]
    # pool_pointmap writes 0 for a cell CUT3R gave no point (outside its crop): unknown
    known = np.isfinite(points).all(1) & (np.abs(points).sum(1) > 0)
    up = estimate_up(points[known], poses)
    frame = bev_frame(poses[0], up.up, up.source)
    xy = np.where(known[:, None], frame.points(points)[:, :2], np.nan)
    return torch.from_numpy(xy)[patch_index]


def _patch_truth(episode, patch_index: torch.Tensor):
    """The true layout (P, 2), its validity (P,) and the frame (P,) of each patch token."""
    cells = episode.bev_mask[0].numel()
    true_xy = episode.bev_targets.reshape(-1, 2)[patch_index].double()
    valid = episode.bev_mask.reshape(-1)[patch_index]
    return true_xy, valid, patch_index // cells


def _cells(
    episode, record, key: str, patch_index: torch.Tensor, views: str = "all"
) -> torch.Tensor | None:
    """(P,) bool: the patch tokens showing the record's `key` object (EpisodeData.cells_of)."""
    cells = episode.cells_of(record, key, views)
    return None if cells is None else cells.reshape(-1)[patch_index]


def measure(vlm, episodes: list, image_size: int, progress: bool = True) -> dict:
    """The report (see the module docstring) of `vlm` (a Loc3rVLM) on rendered episodes."""
    from loc3r.vlm import frames_to_pixel_values

    if vlm.layout_head is None:
        raise ValueError("the model has no layout head: its layout cannot be measured")
    vlm.eval()
    errors = {name: [] for name in POSITION_READOUTS if name != CEILING}
    mass, top_on_anchor, in_view, by_frame, input_by_frame = [], [], [], {}, {}
    question_mass, anchor_share, question_share = [], [], []
    pointer_mass, pointer_gate, heading_mass, heading_gate = [], [], [], []
    headings = {name: [] for name in HEADING_READOUTS if name != CEILING}
    ceiling_errors: list[tuple[float, ...]] = []  # per situation: METRIC_NAMES' guesses' errors
    directions = {"questions": 0, "majority": 0, **{name: 0 for name in DIRECTION_READOUTS}}
    for episode in tqdm(episodes, desc="bounds", disable=not progress):
        pixels = frames_to_pixel_values(list(episode.frames), size=image_size)
        situations: set[tuple] = set()
        ceiling = episodes_ceiling([episode]) or [None] * len(episode.records)
        for record, top in zip(episode.records, ceiling, strict=True):
            key = (record.situation, tuple(record.position), record.yaw)
            if key not in situations:
                situations.add(key)
                trace = _on_cpu(
                    trace_situation(vlm, pixels, episode.camera_tokens, record.situation)
                )
                true_xy, valid, frames = _patch_truth(episode, trace.patch_index)
                anchor, first = (
                    _cells(episode, record, "anchor_id", trace.patch_index, views)
                    for views in ("all", "first")
                )
                if anchor is None:
                    anchor = first = torch.zeros_like(valid)
                in_view.append(bool(anchor.any()))
                attention = attention_of(trace, "anchor")
                if trace.pointer_gate is not None:
                    pointer_gate.append(trace.pointer_gate)
                if anchor.any():
                    mass.append(float(attention[anchor].sum()))
                    if trace.pointer_attention is not None:
                        pointer_mass.append(float(trace.pointer_attention[anchor].sum()))
                    anchor_share.append(float(anchor.double().mean()))
                    top_on_anchor.append(bool(anchor[attention.argmax()]))
                centre = record.fields.get("anchor_position")
                if len(situations) == 1:  # the points do not depend on the situation
                    input_xy = input_points(vlm, episode, trace.patch_index)
                readouts = position_readouts(
                    trace, anchor, first, true_xy, valid,
                    None if centre is None else torch.tensor(centre), input_xy,
                )  # fmt: skip
                for name, xy in readouts.items():
                    errors[name].append(position_error(record.position, xy.tolist()))
                for name, yaw in heading_readouts(trace).items():
                    headings[name].append(angle_error_deg(yaw, record.yaw))
                if top is not None:  # its guess for each threshold's error
                    ceiling_errors.append(top.position_errors + top.heading_errors)
                if trace.heading_gate is not None:
                    heading_gate.append(trace.heading_gate)
                    faced = _cells(episode, record, "target_id", trace.patch_index)
                    if faced is not None and faced.any():
                        heading_mass.append(float(trace.heading_attention[faced].sum()))
                if len(situations) == 1:  # the layout does not depend on the situation
                    error = (trace.layout.double() - true_xy).norm(dim=-1)
                    stated = None
                    if input_xy is not None:  # NaN where a cell has no point: left out
                        stated = (input_xy.double() - true_xy).norm(dim=-1)
                    for frame in frames.unique().tolist():
                        chosen = valid & (frames == frame)
                        by_frame.setdefault(frame, []).extend(error[chosen].tolist())
                        if stated is not None:
                            known = stated[chosen]
                            input_by_frame.setdefault(frame, []).extend(
                                known[torch.isfinite(known)].tolist()
                            )
            if record.question_type == "direction":
                said, object_mass, share = _directions(vlm, episode, record, pixels)
                said[CEILING] = None if top is None else top.case.prediction
                if object_mass is not None:
                    question_mass.append(object_mass)
                    question_share.append(share)
                truth = record.answers[0]
                directions["questions"] += 1
                directions["majority"] += int(truth == FALLBACK_DIRECTION)
                for name in DIRECTION_READOUTS:
                    directions[name] += int((said.get(name) or FALLBACK_DIRECTION) == truth)
    asked = max(directions["questions"], 1)
    by_view = {  # does the position come from seeing the anchor?
        view: [e for e, seen in zip(errors["f_pos"], in_view, strict=True) if seen == wanted]
        for view, wanted in (("anchor in view", True), ("anchor out of view", False))
    }
    report = {
        "situations": len(errors["f_pos"]),
        "anchor_in_view": float(np.mean(in_view)) if in_view else 0.0,
        "grounding": {
            "anchor_mass": float(np.mean(mass)) if mass else None,
            "top_patch_on_anchor": float(np.mean(top_on_anchor)) if top_on_anchor else None,
            "question_object_mass": float(np.mean(question_mass)) if question_mass else None,
            # what uniform attention over the video patches would put on them
            "anchor_share": float(np.mean(anchor_share)) if anchor_share else None,
            "question_object_share": float(np.mean(question_share)) if question_share else None,
            # the position pointer's (None without it)
            "pointer_anchor_mass": float(np.mean(pointer_mass)) if pointer_mass else None,
            # how often it misses the anchor: under MISSED_MASS of its attention there
            "pointer_anchor_missed": _missed(pointer_mass),
            "pointer_gate": float(np.mean(pointer_gate)) if pointer_gate else None,
            # the heading pointer's, on the faced object (None without it)
            "heading_target_mass": float(np.mean(heading_mass)) if heading_mass else None,
            "heading_target_missed": _missed(heading_mass),
            "heading_gate": float(np.mean(heading_gate)) if heading_gate else None,
        },
        "layout_median_error_m_by_frame": [
            float(np.median(by_frame[f])) if by_frame[f] else None for f in sorted(by_frame)
        ],
        # the points the camera tokens state (the pose source and CUT3R's depth); [] without
        "input_points_median_error_m_by_frame": [
            float(np.median(input_by_frame[f])) if input_by_frame[f] else None
            for f in sorted(input_by_frame)
        ],
        "f_pos_by_view": {
            view: {**_accuracy(chosen), "situations": len(chosen)}
            for view, chosen in by_view.items()
        },
        "position": {
            name: {
                **_accuracy(values),
                "median_error_m": float(np.median(values)) if values else None,
            }
            for name, values in errors.items()
        },
        "heading": {
            name: {
                **{
                    f"acc_{t:.0f}deg": float(np.mean(np.array(values) < t)) if values else 0.0
                    for t in HEADING_THRESHOLDS_DEG
                },
                "median_error_deg": float(np.median(values)) if values else None,
            }
            for name, values in headings.items()
        },
        "direction": {
            "questions": directions["questions"],
            "majority": directions["majority"] / asked,
            **{name: directions[name] / asked for name in DIRECTION_READOUTS},
        },
    }
    report["position"][CEILING], report["heading"][CEILING] = _ceiling_rows(ceiling_errors)
    return report


def heading_readouts(trace) -> dict[str, float]:
    """Every heading of HEADING_READOUTS but the ceiling's for one situation (radians).

    The pose's heading stands in for a pointer's that the model lacks.
    """
    own = trace.pose.yaw
    return {
        "pose": own,
        "f_ori alone": own if trace.head_yaw is None else trace.head_yaw,
        "pointer alone": own if trace.pointer_yaw is None else trace.pointer_yaw,
    }


def _ceiling_rows(errors: list[tuple[float, ...]]) -> tuple[dict, dict]:
    """The ceiling's position and heading rows: each threshold scored with its own guess.

    `errors` (situations, METRIC_NAMES) metres and degrees; the medians are the strictest
    thresholds' guesses'.
    """
    table = np.array(errors, dtype=float).reshape(-1, len(METRIC_NAMES))
    hit = [float(np.mean(table[:, i] < t)) if len(table) else 0.0
           for i, t in enumerate((*POSITION_THRESHOLDS_M, *HEADING_THRESHOLDS_DEG))]  # fmt: skip
    median = [float(np.median(table[:, i])) if len(table) else None for i in (0, 2)]
    position = {METRIC_NAMES[0]: hit[0], METRIC_NAMES[1]: hit[1], "median_error_m": median[0]}
    heading = {
        **{f"acc_{t:.0f}deg": hit[2 + i] for i, t in enumerate(HEADING_THRESHOLDS_DEG)},
        "median_error_deg": median[1],
    }
    return position, heading


def _missed(masses: list[float]) -> float | None:
    """The share of situations whose pointer put under MISSED_MASS on its object; None if none."""
    return float(np.mean(np.array(masses) < MISSED_MASS)) if masses else None


def _accuracy(errors: list[float]) -> dict[str, float]:
    """Acc@0.5m and Acc@1.0m of some situations' position errors (metres); 0 without any."""
    count = max(len(errors), 1)
    return {
        name: sum(e < t for e in errors) / count
        for name, t in zip(METRIC_NAMES, POSITION_THRESHOLDS_M, strict=False)
    }


def _directions(vlm, episode, record, pixels: torch.Tensor) -> tuple[dict, float | None, float]:
    """A direction question answered by geometry, each way of DIRECTION_READOUTS.

    Also returns the mass the answer token's grounding head puts on the question's object (None
    when it is out of view) and the share of the patches that show it (uniform attention's mass).
    """
    trace = _on_cpu(
        trace_situation(vlm, pixels, episode.camera_tokens, record.situation, record.question)
    )
    true_xy, valid, _ = _patch_truth(episode, trace.patch_index)
    attended = [attention_of(trace, name) for name in GROUNDING_OF]
    cells = [_cells(episode, record, key, trace.patch_index) for key in DIRECTION_OBJECTS]
    answers = {
        "model grounding, model layout": direction_by_geometry(*attended, trace.layout),
        "egocentric head": egocentric_direction(trace.egocentric),
        **lm_directions(vlm, pixels, episode.camera_tokens, record),
    }
    poses = {"model pose": (trace.pose.xy.tolist(), trace.pose.yaw),
             "true pose": (list(record.position), record.yaw)}  # fmt: skip
    for name, (position, yaw) in poses.items():
        for grounding, obj in (("model grounding", attended[2]), ("true object", cells[2])):
            answers[f"{name}, {grounding}"] = direction_from_pose(position, yaw, obj, trace.layout)
    if any(c is None for c in cells):
        return answers, None, 0.0
    answers["true grounding, model layout"] = direction_by_geometry(*cells, trace.layout)
    answers["true grounding, true layout"] = direction_by_geometry(*cells, true_xy, valid)
    mass = float(attended[2][cells[2]].sum()) if cells[2].any() else None
    return answers, mass, float(cells[2].double().mean())


def lm_directions(vlm, pixels: torch.Tensor, camera_tokens, record) -> dict[str, str | None]:
    """The LM's answer to a record's question from the model's pose and from the true one.

    None each for a model without an answer vocabulary.
    """
    names = ("LM answer, model pose", "LM answer, true pose")
    vocabulary = vlm.answer_vocabulary
    if vocabulary is None:
        return dict.fromkeys(names)
    prefix = vlm.encode_scene(pixels, camera_tokens)
    own = vlm.localize(prefix, record.situation)
    truth = replace(own, xy=torch.tensor(record.position, dtype=torch.float32), yaw=record.yaw)
    answers = {}
    for name, pose in zip(names, (own, truth), strict=True):
        scores = vlm.score_answers(prefix, record.question, record.situation, pose)
        answers[name] = vocabulary[int(scores.argmax())]
    return answers


def _on_cpu(trace):
    """The trace with its tensors on the CPU (the truth lives there)."""
    pose = replace(trace.pose, xy=trace.pose.xy.cpu())
    layout = None if trace.layout is None else trace.layout.cpu()
    head_xy, pointer_xy, pointer, heading, egocentric = (
        None if t is None else t.cpu()
        for t in (trace.head_xy, trace.pointer_xy, trace.pointer_attention,
                  trace.heading_attention, trace.egocentric)
    )  # fmt: skip
    return replace(trace, attention=trace.attention.cpu(), layout=layout, pose=pose,
                   head_xy=head_xy, pointer_xy=pointer_xy, pointer_attention=pointer,
                   heading_attention=heading, egocentric=egocentric)  # fmt: skip


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    grounding = report["grounding"]

    def by_frame(key: str) -> str:
        return ", ".join("n/a" if e is None else f"{e:.2f}" for e in report.get(key, []))

    lines = [
        f"{report['situations']} situations; the anchor is in view in "
        f"{_pct(report['anchor_in_view'])} of them.",
        "",
        f"Grounding: <Pos> puts {_pct(grounding['anchor_mass'])} of its attention on the anchor "
        f"(uniform attention: {_pct(grounding['anchor_share'])}); its top patch shows it in "
        f"{_pct(grounding['top_patch_on_anchor'])}. On direction questions the answer token puts "
        f"{_pct(grounding['question_object_mass'])} on the object asked about (uniform: "
        f"{_pct(grounding['question_object_share'])}).",
        *(
            []
            if grounding.get("pointer_gate") is None
            else [
                "",
                f"Position pointer: {_pct(grounding['pointer_anchor_mass'])} of its attention "
                f"on the anchor (under {100 * MISSED_MASS:.0f} % of it in "
                f"{_pct(grounding['pointer_anchor_missed'])} of the situations), gate "
                f"{grounding['pointer_gate']:.2f} on average.",
            ]
        ),
        *(
            []
            if grounding.get("heading_gate") is None
            else [
                "",
                f"Heading pointer: {_pct(grounding['heading_target_mass'])} of its attention "
                f"on the faced object (under {100 * MISSED_MASS:.0f} % of it in "
                f"{_pct(grounding['heading_target_missed'])} of the situations), gate "
                f"{grounding['heading_gate']:.2f} on average.",
            ]
        ),
        "",
        "f_pos at 1.0 m: "
        + "; ".join(
            f"{_pct(row['acc_1_0m'])} with the {view} ({row['situations']} situations)"
            for view, row in report["f_pos_by_view"].items()
        )
        + ".",
        "",
        f"Layout median error by frame (m): {by_frame('layout_median_error_m_by_frame')}",
        *(
            [
                f"Input points' median error by frame (m): "
                f"{by_frame('input_points_median_error_m_by_frame')}"
            ]
            if report.get("input_points_median_error_m_by_frame")
            else []
        ),
        "",
        "| position read-out | Acc@0.5m | Acc@1.0m | median error |",
        "|---|---|---|---|",
    ]
    for name, row in report["position"].items():
        median = row["median_error_m"]
        lines.append(
            f"| {name} | {_pct(row['acc_0_5m'])} | {_pct(row['acc_1_0m'])} | "
            + ("n/a" if median is None else f"{median:.2f} m")
            + " |"
        )
    lines += ["", "| heading read-out | Acc@15° | Acc@30° | median error |", "|---|---|---|---|"]
    for name, row in report.get("heading", {}).items():
        median = row["median_error_deg"]
        lines.append(
            f"| {name} | {_pct(row['acc_15deg'])} | {_pct(row['acc_30deg'])} | "
            + ("n/a" if median is None else f"{median:.1f}°")
            + " |"
        )
    d = report["direction"]
    lines += [
        "",
        f"| {d['questions']} direction questions answered by geometry (the LM: its own) | EM |",
        "|---|---|",
        *(f"| {name} | {_pct(d[name])} |" for name in DIRECTION_READOUTS),
        f"| majority answer | {_pct(d['majority'])} |",
    ]
    return "\n".join(lines)


def swap_vlm(bundle, directory: str | Path):
    """The Loc3R-VLM saved in `directory`, to be traced with `bundle`'s CUT3R and pose source.

    For a VLM trained without a bundle of its own (an oracle run of make_default_model saves
    only its `vlm/`). Raises ValueError when its camera tokens are not the bundle's.
    """
    from loc3r.engine.models import camera_token_mismatch
    from loc3r.vlm import Loc3rVLM

    vlm = Loc3rVLM.from_pretrained(directory)
    if (mismatch := camera_token_mismatch(vlm, bundle.perception)) is not None:
        raise ValueError(f"{directory}: {mismatch}")
    vlm.set_answer_vocabulary(bundle.model.vlm.answer_vocabulary)
    return vlm


def main(argv: list[str] | None = None) -> int:
    """Render the held-out rooms, trace the model on every situation, print (and save) it."""
    from loc3r.engine.models import load_bundle
    from loc3r.eval.run import (
        DEFAULT_HELD_OUT,
        add_scene_arguments,
        parse_seeds,
        scene_config,
        scenes_like_training,
    )
    from loc3r.train.synthetic_data import CAMERA_PRIORS, build_episodes

    parser = argparse.ArgumentParser(
        prog="python -m loc3r.eval.bounds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="", help="model directory (default: embedded)")
    parser.add_argument(
        "--vlm",
        default="",
        help="trace this saved VLM (a directory with config.json) instead of the bundle's, with "
        "the bundle's CUT3R and pose source (e.g. the vlm/ of an oracle run)",
    )
    parser.add_argument("--seeds", default=DEFAULT_HELD_OUT, help="synthetic scenes A:B (B excl.)")
    parser.add_argument("--frames", type=int, default=0, help="frames per scene (default: model)")
    add_scene_arguments(parser)
    parser.add_argument(
        "--camera-prior",
        choices=CAMERA_PRIORS,
        default="cut3r",
        help="'oracle': the true poses in the camera tokens, with the true point of every cell "
        "for a model with geometry tokens (what a perfect pose source and depth would state)",
    )
    parser.add_argument("--out", type=Path, help="JSON report to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    bundle = load_bundle(args.model or None)
    scenes_like_training(args, bundle)
    vlm = bundle.model.vlm
    if args.vlm:
        try:
            vlm = swap_vlm(bundle, args.vlm)
        except (OSError, ValueError) as error:
            parser.error(f"--vlm: {error}")
    grid = vlm.base.config.pooled_grid
    config = scene_config(args, args.frames or bundle.num_query_frames)
    episodes = build_episodes(
        seeds, config, bundle.perception, grid, progress=not args.no_progress,
        camera_prior=args.camera_prior, image_size=args.image_size,
    )  # fmt: skip
    report = measure(vlm, episodes, args.image_size, progress=not args.no_progress)
    report.update(model=args.model or "embedded", vlm=args.vlm or None, seeds=args.seeds,
                  camera_prior=args.camera_prior, stream_video=config.stream_video,
                  seconds=round(time.perf_counter() - start, 1))  # fmt: skip
    print_and_save(report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
