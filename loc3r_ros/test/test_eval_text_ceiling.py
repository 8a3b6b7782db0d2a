"""The ceiling of loc3r.eval.text_ceiling: what the situation's words and the true room allow."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from loc3r.eval.report import EvalInputError, evaluate_cases, markdown_report
from loc3r.eval.text_ceiling import (
    POSITIONS,
    CeilingInputError,
    _to_bev,
    allowed_positions,
    answer_at,
    ceiling_cases,
    ceiling_report,
    episodes_ceiling,
    hypotheses,
)
from loc3r.scenes.episode import EpisodeConfig, make_episode
from loc3r.scenes.situations import (
    MIN_TARGET_DISTANCE,
    NEXT_TO_REACH,
    STANDING_CLEARANCE,
    unique_label,
)
from loc3r.scenes.world import distance_to_footprint, generate_room

SEEDS = range(9930000, 9930014)  # never used for training or evaluation


@pytest.fixture(scope="module")
def episodes():
    """Rooms with their situated questions (tiny frames: only the records are read here)."""
    config = EpisodeConfig(frames=2, image_size=16, situations=6)
    return [make_episode(seed, config) for seed in SEEDS]


def _allowed(room, anchor, target, points) -> np.ndarray:
    """(N,) whether each point keeps make_situation's rules for standing next to `anchor`."""
    ok = distance_to_footprint(anchor, points) <= NEXT_TO_REACH + 1e-9
    for obj in room.objects:
        ok &= distance_to_footprint(obj, points) >= STANDING_CLEARANCE - 1e-9
    ok &= (points >= STANDING_CLEARANCE - 1e-9).all(1)
    ok &= (points <= np.array([room.width, room.depth]) - STANDING_CLEARANCE + 1e-9).all(1)
    far = np.linalg.norm(points - np.array(target.centre[:2]), axis=1) >= MIN_TARGET_DISTANCE
    return ok & far


def test_each_answer_at_the_true_pose_is_the_records(episodes):
    """The ceiling answers the way make_questions does: at the true pose it gives the truth."""
    checked = 0
    for episode in episodes:
        for record in episode.records:
            fields = record.fields
            position, yaw = fields["world_position"], fields["world_yaw"]
            said = answer_at(episode.room, record, position, yaw, fields["anchor_id"],
                             fields["target_id"])  # fmt: skip
            assert said == record.answers[0]
            checked += 1
    assert checked > 200


def test_the_allowed_positions_follow_the_rules_and_hold_the_true_one(episodes):
    standing = 0
    for episode in episodes:
        room = episode.room
        for situation in {r.situation: r for r in episode.records}.values():
            anchor = room.objects[situation.fields["anchor_id"]]
            target = room.objects[situation.fields["target_id"]]
            truth = np.array([situation.fields["world_position"]])
            if " sitting on " in situation.situation:
                points = allowed_positions(room, anchor, target, True, 0)
                np.testing.assert_allclose(points, truth, atol=1e-9)
                continue
            points = allowed_positions(room, anchor, target, False, 7)
            assert len(points) == POSITIONS
            assert _allowed(room, anchor, target, points).all()
            assert _allowed(room, anchor, target, truth).all()  # the truth is one of them
            # they spread around the anchor (both sides of a wide footprint), not one spot
            assert np.ptp(points, axis=0).max() > 0.5
            standing += 1
    assert standing > 20


def test_a_situation_with_the_agent_sitting_has_its_true_pose_and_answers(episodes):
    sitting = 0
    for episode in episodes:
        for top, record in zip(
            ceiling_cases(episode.seed, episode.records), episode.records, strict=True
        ):
            if " sitting on " not in record.situation:
                continue
            pairs = hypotheses(episode.room, record.situation, episode.seed)
            if len(pairs.positions) > 1:  # two objects fit the words: the pose is open
                continue
            sitting += 1
            case = top.case
            assert top.position_errors == pytest.approx((0.0, 0.0), abs=1e-9)
            assert top.heading_errors == pytest.approx((0.0, 0.0), abs=1e-6)
            np.testing.assert_allclose(case.pred_positions[0], record.position, atol=1e-9)
            assert math.remainder(case.pred_yaws[0] - record.yaw, 2 * math.pi) == pytest.approx(
                0.0, abs=1e-9
            )
            assert case.prediction == record.answers[0]
    assert sitting > 10


def test_the_bev_transform_puts_objects_where_the_episode_does(episodes):
    """make_episode's own BEV frame placed the anchor and the asked-about object: so must we."""
    checked = 0
    for episode in episodes:
        for record in episode.records:
            for key, where in (("anchor_id", "anchor_position"), ("object_id", "object_position")):
                if where not in record.fields:
                    continue
                centre = np.array(episode.room.objects[record.fields[key]].centre[:2])
                xy, _ = _to_bev(record, centre, 0.0)
                np.testing.assert_allclose(xy, record.fields[where], atol=1e-6)
                checked += 1
            # and a heading: the true one, turned the way the frame turns
            world = np.array(record.fields["world_position"])
            _, yaw = _to_bev(record, world, record.fields["world_yaw"] + 0.3)
            assert math.remainder(yaw - record.yaw - 0.3, 2 * math.pi) == pytest.approx(0, abs=1e-9)
    assert checked > 200


def test_words_that_fit_two_objects_pool_both():
    """ "the green plant" in a room of two green plants: the agent may be next to either."""
    for seed in range(9931000, 9931400):
        room = generate_room(seed)
        labels = [unique_label(room, o) for o in room.objects]
        twins = [i for i, label in enumerate(labels) if labels.count(label) > 1]
        if not twins:
            continue
        target = next(o for i, o in enumerate(room.objects) if labels.count(labels[i]) == 1)
        text = f"I am standing next to {labels[twins[0]]}, facing {labels[target.id]}"
        pairs = hypotheses(room, text, seed)
        fit = {room.objects[i].id for i in twins if labels[i] == labels[twins[0]]}
        drawn = set(pairs.anchors.tolist())
        assert drawn <= fit and len(drawn) >= 2, (seed, text)
        counts = [int((pairs.anchors == a).sum()) for a in drawn]
        assert min(counts) == max(counts)  # the pairs are equally likely
        assert set(pairs.targets.tolist()) == {target.id}
        return
    pytest.fail("no room of 400 has two objects of one label")


def test_each_pose_threshold_gets_its_own_guess(episodes):
    """At 1.0 m the ceiling is no worse than standing at the anchor's centre (a model may)."""
    ceiling = episodes_ceiling(episodes)
    records = [r for e in episodes for r in e.records]
    centre = [
        math.dist(r.fields["world_position"], e.room.objects[r.fields["anchor_id"]].centre[:2])
        for e in episodes
        for r in e.records
    ]
    at_one = np.mean([c.position_errors[1] < 1.0 for c in ceiling])
    assert at_one >= np.mean(np.array(centre) < 1.0)
    assert len(ceiling) == len(records)
    # each guess is the best for its own threshold: the 0.5 m guess does worse at 1.0 m
    assert np.mean([c.position_errors[0] < 1.0 for c in ceiling]) <= at_one


def test_the_ceiling_beats_the_majority_and_the_words_leave_the_pose_open(episodes):
    ceiling = episodes_ceiling(episodes)
    assert ceiling is not None
    cases = [c.case for c in ceiling]
    assert [c.id for c in cases] == [f"{e.seed}-{i}" for e in episodes for i in
                                     range(len(e.records))]  # fmt: skip
    report = evaluate_cases(cases)
    report["ceiling"] = ceiling_report(ceiling, cases)
    answers, majority = report["ceiling"]["answers"], report["majority"]["answers"]
    for kind in ("direction", "nearest", "what_side", "distance"):
        assert answers["em_by_type"][kind] > majority["em_by_type"][kind] + 0.15, kind
    for kind in ("colour", "counting"):  # the pose does not change them (1e-10 as LEO divides)
        assert answers["em_by_type"][kind] == pytest.approx(1.0, abs=1e-9), kind
    # standing next to an object leaves its side open: neither answers nor pose are all right
    assert answers["em_by_type"]["direction"] < 1.0
    pose = report["ceiling"]["localization"]
    assert pose["acc_0_5m"] < 0.9
    for name in ("acc_0_5m", "acc_1_0m", "acc_15deg", "acc_30deg"):
        assert pose[name] > report["random"]["localization"][name] + 0.2, name


def test_the_ceiling_is_deterministic(episodes):
    first = ceiling_cases(episodes[1].seed, episodes[1].records)
    again = ceiling_cases(episodes[1].seed, episodes[1].records)
    assert first == again


def test_the_report_shows_the_ceiling_beside_the_baselines(episodes):
    ceiling = episodes_ceiling(episodes[:3])
    model = [replace(top.case, prediction="in front") for top in ceiling]
    report = evaluate_cases(model)
    plain = markdown_report(report)
    assert "ceiling" not in plain
    report["ceiling"] = ceiling_report(ceiling, model)
    assert report["ceiling"]["answers"]["em"] > report["model"]["answers"]["em"]
    text = markdown_report(report)
    assert "| ceiling (the words, the true room) |" in text
    assert "EM (ceiling) |" in text
    with pytest.raises(EvalInputError, match="not the model's questions"):
        ceiling_report(ceiling[1:], model)


def test_records_that_are_not_a_synthetic_rooms_are_refused(episodes):
    record = episodes[0].records[0]
    stripped = replace(record, fields={k: v for k, v in record.fields.items() if k != "world_yaw"})
    with pytest.raises(CeilingInputError, match="lacks"):
        ceiling_cases(episodes[0].seed, [stripped])

    class Foreign:  # a dataset's episode: its records carry no room geometry
        seed = 0
        records = [stripped]

    assert episodes_ceiling([Foreign()]) is None
