"""The metrics reproduce the official evaluators' recorded outputs, case by case and in aggregate.

Reference: test/data/eval_reference (made by running SQA3D's, LEO's, ScanQA's, VLM-3R's,
Ross3D's, Chat-Scene's, Video-3D-LLM's, SIG3D's and View2Cap's evaluation code unmodified).
Case counts and scores come from its files, so another set made the same way can replace it.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from loc3r.eval.answers import QUESTION_TYPES, clean_answer, score_answer, sqa_question_type
from loc3r.eval.localization import (
    METRIC_NAMES,
    POSITION_THRESHOLDS_M,
    ROTATION_THRESHOLDS_DEG,
    rotvec_z,
    score_heading_sincos,
    score_pose,
    sqa3d_quaternion,
)
from loc3r.eval.report import EvalCase, aggregate_answers, aggregate_poses, score_answers

# fixture key -> (our variant, has refined EM)
QA_FAMILIES = {
    "leo": ("leo", True),
    "vlm3r_ross3d": ("vlm3r", True),
    "chatscene_family": ("chatscene", True),
    "video3dllm": ("video3dllm", False),
}


def _rows(data_dir, name: str) -> list[dict]:
    with open(data_dir / "eval_reference" / name, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def qa_rows(data_dir) -> list[dict]:
    return _rows(data_dir, "qa_cases.jsonl")


@pytest.fixture(scope="module")
def loc_rows(data_dir) -> list[dict]:
    return _rows(data_dir, "loc_cases.jsonl")


@pytest.fixture(scope="module")
def aggregates(data_dir) -> dict:
    return json.loads((data_dir / "eval_reference" / "aggregates.json").read_text())


def _case(row: dict) -> EvalCase:
    kind = QUESTION_TYPES[row["question_type"]] if row["dataset"] == "sqa3d" else "scanqa"
    return EvalCase(row["id"], row["question"], row["prediction"], row["references"], kind,
                    dataset=row["dataset"])  # fmt: skip


def test_every_qa_case_matches_every_family(qa_rows, aggregates):
    counts = Counter(row["dataset"] for row in qa_rows)
    assert counts == {dataset: want["n"] for dataset, want in aggregates["qa"].items()}
    mismatches = []
    for row in qa_rows:
        for key, (variant, refined) in QA_FAMILIES.items():
            got = score_answer(row["prediction"], row["references"], variant, row["dataset"])
            want = row[key]
            if got.em != want["em"] or (refined and got.em_refined != want["em_refined"]):
                mismatches.append((row["id"], variant, got, want))
        leo = score_answer(row["prediction"], row["references"], "leo", row["dataset"])
        if (
            leo.pred_norm != row["leo"]["pred_norm"]
            or list(leo.refs_used) != row["leo"]["refs_norm"]
        ):
            mismatches.append((row["id"], "leo normalisation", leo, row["leo"]))
        chat = score_answer(row["prediction"], row["references"], "chatscene", row["dataset"])
        family = row["chatscene_family"]
        if chat.pred_norm != family["pred_norm"] or list(chat.refs_used) != family["refs_used"]:
            mismatches.append((row["id"], "chatscene normalisation", chat, family))
        if row["dataset"] == "sqa3d" and sqa_question_type(row["question"]) != row["question_type"]:
            mismatches.append((row["id"], "question type", row["question"]))
        if row["dataset"] == "scanqa":
            official = score_answer(
                row["prediction"], row["references"], "scanqa_official", "scanqa"
            )
            want = row["scanqa_official"]["em_top1"]
            if (want is None) == official.scored or (want is not None and official.em != want):
                mismatches.append((row["id"], "scanqa_official", official, want))
    assert not mismatches, mismatches[:5]


def test_clean_answer_quirks():
    # rules of the official clean_answer (the README's conventions), not values of the case set
    assert clean_answer("pillow .") == "pillow "  # spaces stripped before punctuation is deleted
    assert clean_answer("The 2") == "two" and clean_answer("the") == "the"
    assert clean_answer("tv") == "TV" and clean_answer("chair2") == "chair"
    assert clean_answer("21 chairs") == "21 chairs" and clean_answer("23") == "twenty-three"
    assert clean_answer("none") == "zero" and clean_answer("backwards") == "backward"


def test_sqa3d_qa_aggregates(qa_rows, aggregates):
    rows = [r for r in qa_rows if r["dataset"] == "sqa3d"]
    cases = [_case(r) for r in rows]
    want = aggregates["qa"]["sqa3d"]
    leo = aggregate_answers(cases, score_answers(cases, "leo"), "leo")
    assert leo["em"] == want["leo"]["em_overall"]
    assert leo["em_refined"] == want["leo"]["em_refined_overall"]
    chat = aggregate_answers(cases, score_answers(cases, "chatscene"), "chatscene")
    assert chat["em"] == want["chatscene_family"]["EM1"]
    assert chat["em_refined"] == want["chatscene_family"]["EM1_refined"]
    ross = aggregate_answers(cases, score_answers(cases, "vlm3r"), "vlm3r")
    video = aggregate_answers(cases, score_answers(cases, "video3dllm"), "video3dllm")
    assert 100 * ross["em"] == pytest.approx(want["ross3d_percent"]["all"], abs=1e-12)
    assert 100 * ross["em_refined"] == pytest.approx(want["ross3d_percent"]["refined"], abs=1e-12)
    assert 100 * video["em"] == pytest.approx(want["video3dllm_percent"]["all"], abs=1e-12)
    assert "em_refined" not in video
    for index, kind in enumerate(QUESTION_TYPES):
        assert leo["em_by_type"][kind] == pytest.approx(want["leo"][f"em_type{index}"], abs=1e-15)
        assert leo["em_refined_by_type"][kind] == pytest.approx(
            want["leo"][f"em_refined_type{index}"], abs=1e-15
        )
        family = want["chatscene_family"]
        assert chat["em_by_type"][kind] == pytest.approx(family[f"EM_type{index}"], abs=1e-15)
        assert chat["em_refined_by_type"][kind] == pytest.approx(
            family[f"EM_refined_type{index}"], abs=1e-15
        )
        percent = want["ross3d_percent"][str(index)]
        assert 100 * ross["em_by_type"][kind] == pytest.approx(percent, abs=1e-9)
        assert 100 * video["em_by_type"][kind] == pytest.approx(
            want["video3dllm_percent"][str(index)], abs=1e-9
        )
    # LEO divides by count + 1e-10, so no question type ever scores exactly 1
    assert max(leo["em_by_type"].values()) < 1.0 and max(leo["em_refined_by_type"].values()) < 1.0


def test_scanqa_qa_aggregates(qa_rows, aggregates):
    cases = [_case(r) for r in qa_rows if r["dataset"] == "scanqa"]
    want = aggregates["qa"]["scanqa"]
    for variant, key in (("leo", "leo"), ("vlm3r", "vlm3r")):
        got = aggregate_answers(cases, score_answers(cases, variant), variant)
        assert (got["em"], got["em_refined"]) == (want[key]["em"], want[key]["em_refined"])
    chat = aggregate_answers(cases, score_answers(cases, "chatscene"), "chatscene")
    assert (chat["em"], chat["em_refined"]) == (
        want["chatscene_family"]["EM1"],
        want["chatscene_family"]["EM1_refined"],
    )
    video = aggregate_answers(cases, score_answers(cases, "video3dllm"), "video3dllm")
    assert video["em"] == want["video3dllm"]["em"]
    official = aggregate_answers(cases, score_answers(cases, "scanqa_official"), "scanqa_official")
    # the cases evals_json could score (it crashes, em_top1 null, on the others)
    used = sum(
        r["scanqa_official"]["em_top1"] is not None for r in qa_rows if r["dataset"] == "scanqa"
    )
    assert official["n_used"] == want["scanqa_official"]["n_used"] == used
    assert 100 * official["em"] == pytest.approx(want["scanqa_official"]["top1_em_percent"])


def _gt(row: dict):
    return [row["gt"]["position"][k] for k in "xyz"], sqa3d_quaternion(row["gt"]["rotation"])


def test_every_localization_case_matches(loc_rows, aggregates):
    assert len(loc_rows) == aggregates["localization"]["n"]
    worst_pos = worst_rot = 0.0
    mismatches = []
    for row in loc_rows:
        gt_pos, gt_quat = _gt(row)
        pred = row["pred"]
        for variant in ("sqa3d", "sig3d_quat", "view2cap"):
            got = score_pose(gt_pos, gt_quat, [pred["position"]], [pred["quat_xyzw"]], variant)
            want = row[variant]
            if got.flags() != {name: want[name] for name in METRIC_NAMES}:
                mismatches.append((row["id"], row["category"], variant, got, want))
            worst_pos = max(worst_pos, abs(got.pos_err_m - want["pos_err_m"]))
            worst_rot = max(worst_rot, abs(got.rot_err_deg - want["rot_err_deg"]))
        angle = row["sig3d_angle"]
        got = score_heading_sincos(
            gt_pos, angle["gt_sincos"], pred["position"], angle["pred_sincos"]
        )
        if got.flags() != {name: angle[name] for name in METRIC_NAMES}:
            mismatches.append((row["id"], row["category"], "sig3d_angle", got, angle))
        worst_rot = max(worst_rot, abs(got.rot_err_deg - angle["rot_err_deg"]))
        assert rotvec_z(gt_quat) == pytest.approx(row["rotvec_z_rad"]["gt"], abs=1e-12)
    assert not mismatches, mismatches[:5]
    assert worst_pos < 1e-12 and worst_rot < 1e-9, (worst_pos, worst_rot)


def test_localization_aggregates(loc_rows, aggregates):
    want = aggregates["localization"]
    keys = {
        "sqa3d": ("acc@0.5m", "acc@1.0m", "acc@15°", "acc@30°"),
        "sig3d_quat": ("acc@0.5m", "acc@1.0m", "acc@15deg", "acc@30deg"),
        "view2cap": ("Acc@0.5m", "Acc@1.0m", "Acc@15d", "Acc@30d"),
    }
    scores = {}
    for variant, names in keys.items():
        scores[variant] = []
        for row in loc_rows:
            gt_pos, gt_quat = _gt(row)
            score = score_pose(gt_pos, gt_quat, [row["pred"]["position"]],
                               [row["pred"]["quat_xyzw"]], variant)  # fmt: skip
            scores[variant].append({"pos_err_m": score.pos_err_m,
                                    "rot_err_deg": score.rot_err_deg, **score.flags()})  # fmt: skip
        got = aggregate_poses(scores[variant])
        assert got["n"] == want["n"] == len(loc_rows)
        for ours, theirs in zip(METRIC_NAMES, names, strict=True):
            assert got[ours] == pytest.approx(want[variant][theirs], abs=1e-15), (variant, ours)
    # View2Cap's inclusive thresholds (<=) count exactly the cases on a threshold in addition
    bounds = [("pos_err_m", t) for t in POSITION_THRESHOLDS_M]
    bounds += [("rot_err_deg", t) for t in ROTATION_THRESHOLDS_DEG]
    for name, (error, threshold) in zip(METRIC_NAMES, bounds, strict=True):
        on_threshold = sum(s[error] == threshold for s in scores["sqa3d"])
        extra = sum(s[name] for s in scores["view2cap"]) - sum(s[name] for s in scores["sqa3d"])
        assert extra == on_threshold, name


def test_multi_prediction_cases(data_dir, aggregates):
    rows = _rows(data_dir, "loc_multi_pred_cases.jsonl")
    assert len(rows) == aggregates["localization_multi_pred"]["n"]
    scores = []
    for row in rows:
        gt_pos, gt_quat = _gt(row)
        preds = row["preds"]
        score = score_pose(gt_pos, gt_quat, [p["position"] for p in preds],
                           [p["quat_xyzw"] for p in preds])  # fmt: skip
        want = row["sqa3d"]
        assert score.flags() == {name: want[name] for name in METRIC_NAMES}, row["id"]
        assert score.pos_err_m == pytest.approx(want["min_pos_err_m"], abs=1e-12)
        assert score.rot_err_deg == pytest.approx(want["min_rot_err_deg"], abs=1e-9)
        scores.append({"pos_err_m": score.pos_err_m, "rot_err_deg": score.rot_err_deg,
                       **score.flags()})  # fmt: skip
    got = aggregate_poses(scores)
    want = aggregates["localization_multi_pred"]["sqa3d"]
    assert [got[name] for name in METRIC_NAMES] == pytest.approx(
        [want["acc@0.5m"], want["acc@1.0m"], want["acc@15°"], want["acc@30°"]], abs=1e-15
    )


def _write_rows(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_a_second_fixture_set_passes_unchanged(data_dir, tmp_path):
    """Another official set in the same layout passes the tests above as it is.

    It is made from this one without rerunning the official code: every localization and
    ScanQA case is there twice (under new ids). That leaves their official scores as they are
    (plain means: an equal ratio is the same float) and changes the case counts, which are
    written into its aggregates.json. A count written into a test would fail here. (The SQA3D
    QA cases stay single: LEO's count + 1e-10 denominators would change with the counts.)
    """
    (other := tmp_path / "eval_reference").mkdir()  # all four files are written below
    aggregates = json.loads((data_dir / "eval_reference" / "aggregates.json").read_text())

    def twice(rows: list[dict]) -> list[dict]:
        return rows + [{**row, "id": f"{row['id']}-again"} for row in rows]

    loc = twice(_rows(data_dir, "loc_cases.jsonl"))
    _write_rows(other / "loc_cases.jsonl", loc)
    aggregates["localization"]["n"] = len(loc)
    multi = twice(_rows(data_dir, "loc_multi_pred_cases.jsonl"))
    _write_rows(other / "loc_multi_pred_cases.jsonl", multi)
    aggregates["localization_multi_pred"]["n"] = len(multi)
    qa = _rows(data_dir, "qa_cases.jsonl")
    qa = [row for row in qa if row["dataset"] == "sqa3d"] + twice(
        [row for row in qa if row["dataset"] == "scanqa"]
    )
    _write_rows(other / "qa_cases.jsonl", qa)
    aggregates["qa"]["scanqa"]["n"] *= 2
    aggregates["qa"]["scanqa"]["scanqa_official"]["n_used"] *= 2
    (other / "aggregates.json").write_text(json.dumps(aggregates), encoding="utf-8")

    qa_rows, loc_rows = _rows(tmp_path, "qa_cases.jsonl"), _rows(tmp_path, "loc_cases.jsonl")
    stored = json.loads((other / "aggregates.json").read_text())
    assert len(loc_rows) != len(_rows(data_dir, "loc_cases.jsonl"))  # a different set indeed
    test_every_qa_case_matches_every_family(qa_rows, stored)
    test_sqa3d_qa_aggregates(qa_rows, stored)
    test_scanqa_qa_aggregates(qa_rows, stored)
    test_every_localization_case_matches(loc_rows, stored)
    test_localization_aggregates(loc_rows, stored)
    test_multi_prediction_cases(tmp_path, stored)


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown answer variant"):
        score_answer("a", ["a"], "bleu")
    with pytest.raises(ValueError, match="at least one reference"):
        score_answer("a", [])
    with pytest.raises(ValueError, match="not a rotation"):
        score_pose([0, 0], [0, 0, 0, 0], [[0, 0]], [[0, 0, 0, 1]])
    with pytest.raises(ValueError, match="at most three"):
        score_pose([0, 0], [0, 0, 0, 1], [[0, 0]] * 4, [[0, 0, 0, 1]] * 4)
    with pytest.raises(ValueError, match="exactly one"):
        score_pose([0, 0], [0, 0, 0, 1], [[0, 0]] * 2, [[0, 0, 0, 1]] * 2, "view2cap")
    yaw = score_pose([0, 0], [0, 0, 0, 1], [[0.3, 0.4]], [[0, 0, math.sin(0.5), math.cos(0.5)]])
    assert yaw.pos_err_m == pytest.approx(0.5) and yaw.rot_err_deg == pytest.approx(
        math.degrees(1.0)
    )
