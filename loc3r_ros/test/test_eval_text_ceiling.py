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
    episodes_ceiling,
)
from loc3r.scenes.episode import EpisodeConfig, make_episode
from loc3r.scenes.situations import MIN_TARGET_DISTANCE, NEXT_TO_REACH, STANDING_CLEARANCE
from loc3r.scenes.world import distance_to_footprint

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
            position, yaw = record.fields["world_position"], record.fields["world_yaw"]
            assert answer_at(episode.room, record, position, yaw) == record.answers[0]
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
        for case, record in zip(
            ceiling_cases(episode.seed, episode.records), episode.records, strict=True
        ):
            if " sitting on " not in record.situation:
                continue
            sitting += 1
            np.testing.assert_allclose(case.pred_positions[0], record.position, atol=1e-9)
            assert math.remainder(case.pred_yaws[0] - record.yaw, 2 * math.pi) == pytest.approx(
                0.0, abs=1e-9
            )
            assert case.prediction == record.answers[0]
    assert sitting > 10


def test_the_bev_transform_takes_the_true_world_pose_to_the_records(episodes):
    for record in episodes[0].records:
        world = np.array(record.fields["world_position"])
        xy, yaw = _to_bev(record, world, record.fields["world_yaw"])
        np.testing.assert_allclose(xy, record.position, atol=1e-9)
        assert math.remainder(yaw - record.yaw, 2 * math.pi) == pytest.approx(0.0, abs=1e-9)


def test_the_ceiling_beats_the_majority_and_the_words_leave_the_pose_open(episodes):
    ceiling = episodes_ceiling(episodes)
    assert ceiling is not None
    assert [c.id for c in ceiling] == [f"{e.seed}-{i}" for e in episodes for i in
                                       range(len(e.records))]  # fmt: skip
    report = evaluate_cases(ceiling)
    answers, majority = report["model"]["answers"], report["majority"]["answers"]
    for kind in ("direction", "nearest", "what_side", "distance"):
        assert answers["em_by_type"][kind] > majority["em_by_type"][kind] + 0.15, kind
    for kind in ("colour", "counting"):  # the pose does not change them (1e-10 as LEO divides)
        assert answers["em_by_type"][kind] == pytest.approx(1.0, abs=1e-9), kind
    # standing next to an object leaves its side open: neither answers nor pose are all right
    assert answers["em_by_type"]["direction"] < 1.0
    assert report["model"]["localization"]["acc_0_5m"] < 0.9
    assert report["model"]["localization"]["acc_1_0m"] > report["random"]["localization"][
        "acc_1_0m"
    ]  # fmt: skip


def test_the_ceiling_is_deterministic(episodes):
    first = ceiling_cases(episodes[1].seed, episodes[1].records)
    again = ceiling_cases(episodes[1].seed, episodes[1].records)
    assert [(c.prediction, c.pred_positions, c.pred_yaws) for c in first] == [
        (c.prediction, c.pred_positions, c.pred_yaws) for c in again
    ]


def test_the_report_shows_the_ceiling_beside_the_baselines(episodes):
    ceiling = episodes_ceiling(episodes[:3])
    model = [replace(case, prediction="in front") for case in ceiling]
    report = evaluate_cases(model, ceiling=ceiling)
    assert report["ceiling"]["answers"]["em"] > report["model"]["answers"]["em"]
    text = markdown_report(report)
    assert "| ceiling (the words, the true room) |" in text
    assert "EM (ceiling) |" in text
    plain = markdown_report(evaluate_cases(model))
    assert "ceiling" not in plain
    with pytest.raises(EvalInputError, match="not the model's questions"):
        evaluate_cases(model, ceiling=ceiling[1:])


def test_records_that_are_not_a_synthetic_rooms_are_refused(episodes):
    record = episodes[0].records[0]
    stripped = replace(record, fields={k: v for k, v in record.fields.items() if k != "world_yaw"})
    with pytest.raises(CeilingInputError, match="lacks"):
        ceiling_cases(episodes[0].seed, [stripped])

    class Foreign:  # a dataset's episode: its records carry no room geometry
        seed = 0
        records = [stripped]

    assert episodes_ceiling([Foreign()]) is None
