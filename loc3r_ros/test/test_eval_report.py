"""`loc3r eval`: predictions files, baselines, reports, and the model path end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loc3r.cli import main as cli_main
from loc3r.engine.models import DEFAULT_MODEL_DIR
from loc3r.eval.report import (
    EvalCase,
    EvalInputError,
    evaluate_cases,
    markdown_report,
    random_baseline,
    read_cases,
    write_cases,
)

EMBEDDED = json.loads((DEFAULT_MODEL_DIR / "bundle.json").read_text())


def _case(i: int, prediction: str, answer: str, kind: str, yaw_err: float = 0.0, shift=0.0):
    x, y, yaw = 0.1 * i, -0.05 * i, math.remainder(0.7 * i, 2 * math.pi)
    return EvalCase(
        id=str(i), question=f"q{i}?", prediction=prediction, references=[answer],
        question_type=kind, scene_id=f"s{i % 2}", gt_position=[x, y, 0.0], gt_yaw=yaw,
        pred_positions=[[x + shift, y]], pred_yaws=[yaw + yaw_err],
    )  # fmt: skip


def test_perfect_and_wrong_predictions_score_one_and_zero():
    perfect = [_case(i, "left", "left", "direction") for i in range(10)]
    report = evaluate_cases(perfect)
    assert report["model"]["answers"]["em"] == 1.0
    assert all(report["model"]["localization"][k] == 1.0 for k in ("acc_0_5m", "acc_30deg"))
    wrong = [_case(i, "right", "left", "direction", yaw_err=math.pi, shift=2.0) for i in range(10)]
    report = evaluate_cases(wrong)
    assert report["model"]["answers"]["em"] == 0.0
    assert report["model"]["localization"]["acc_1_0m"] == 0.0
    assert report["model"]["localization"]["acc_30deg"] == 0.0
    assert report["model"]["localization"]["median_rot_err_deg"] == pytest.approx(180.0)


def test_thresholds_strict_for_sqa3d_inclusive_for_view2cap():
    cases = [_case(0, "a", "a", "t", shift=0.5)]  # exactly 0.5 m off in x
    assert evaluate_cases(cases, localization_variant="sqa3d")["model"]["localization"][
        "acc_0_5m"
    ] == 0.0  # fmt: skip
    assert evaluate_cases(cases, localization_variant="view2cap")["model"]["localization"][
        "acc_0_5m"
    ] == 1.0  # fmt: skip


def test_majority_baseline_uses_the_most_frequent_answer_per_type():
    cases = [_case(i, "x", "left" if i < 7 else "right", "direction") for i in range(10)]
    cases += [_case(10 + i, "x", "two" if i < 2 else "one", "counting") for i in range(5)]
    major = evaluate_cases(cases)["majority"]["answers"]
    assert major["answers"] == {"direction": "left", "counting": "one"}
    assert major["em"] == pytest.approx((7 + 3) / 15)


def test_random_baseline_matches_its_expectation():
    cases = [_case(i, "a", "a", "t") for i in range(40)]
    rand = random_baseline(cases, "sqa3d", seed=3)
    assert rand["acc_15deg"] == pytest.approx(30 / 360, abs=0.01)
    assert rand["acc_30deg"] == pytest.approx(60 / 360, abs=0.01)
    assert 0.0 < rand["acc_0_5m"] <= rand["acc_1_0m"] <= 1.0
    assert random_baseline(cases, "sqa3d", seed=3) == rand  # seeded


def test_predictions_file_round_trip_and_errors(tmp_path):
    cases = [_case(i, "left", "left", "direction") for i in range(3)]
    cases.append(EvalCase("q", "What is it?", "chair", ["chair", "stool"], dataset="scanqa"))
    path = tmp_path / "preds.jsonl"
    write_cases(path, cases)
    back = read_cases(path)
    assert [c.to_dict() for c in back] == [c.to_dict() for c in cases]
    assert back[-1].question_type == "what"  # SQA3D type from the question when not given
    path.write_text(path.read_text() + '{"id": "bad", "prediction": "x"}\n')
    with pytest.raises(EvalInputError, match=r"preds.jsonl:5: .*references"):
        read_cases(path)
    row = {"id": 1, "prediction": "a", "references": ["a"], "pred": {"position": [0, 0], "yaw": 0},
           "gt": {"position": [float("nan"), 0], "yaw": 0}}  # fmt: skip
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(EvalInputError, match="finite"):
        read_cases(path)
    path.write_text("not json\n")
    with pytest.raises(EvalInputError, match=":1:"):
        read_cases(path)
    path.write_text("")
    with pytest.raises(EvalInputError, match="no cases"):
        read_cases(path)


def test_markdown_names_variants_and_baselines():
    report = evaluate_cases([_case(i, "left", "left", "direction") for i in range(4)], "vlm3r")
    text = markdown_report(report)
    assert "`vlm3r`" in text and "`sqa3d`" in text
    assert "| random |" in text and "| direction | 4 | 100.0 | 100.0 | 100.0 | left |" in text


def test_cli_scores_a_predictions_file(tmp_path, capsys):
    path = tmp_path / "preds.jsonl"
    write_cases(path, [_case(i, "left", "left" if i % 2 else "right", "d") for i in range(6)])
    out = tmp_path / "out"
    assert cli_main(["eval", "--predictions", str(path), "--answers", "chatscene",
                     "--localization", "view2cap", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == {"answers": "chatscene", "localization": "view2cap"}
    assert report["model"]["answers"]["em"] == pytest.approx(0.5)
    assert "Acc@30°" in capsys.readouterr().out
    assert cli_main(["eval", "--predictions", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_runs_the_embedded_model_and_rescoring_agrees(tmp_path):
    out = tmp_path / "run"
    argv = ["eval", "--seeds", "1000003:1000004", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    cases = read_cases(out / "predictions.jsonl")
    assert len(cases) == report["model"]["answers"]["n"] > 10
    assert all(c.scene_id == "synthetic-1000003" and c.has_pose for c in cases)
    again = evaluate_cases(cases)
    assert again["model"] == report["model"] and again["majority"] == report["majority"]
    for value in report["model"]["localization"].values():
        assert math.isfinite(value)
    assert cli_main(["eval", "--seeds", "7:7"]) == 2  # selects no scene: clear error


def test_cli_on_our_dataset_format_matches_the_synthetic_path(tmp_path):
    from loc3r.datasets.format import export_synthetic
    from loc3r.scenes import EpisodeConfig

    # the embedded bundle's rooms, rendered at its VLM's input size: neither path resizes (the
    # synthetic path shrinks larger renders with OpenCV's area filter, the engine with PIL's)
    rooms = EMBEDDED["training_scenes"]
    vlm = json.loads((DEFAULT_MODEL_DIR / "vlm" / "config.json").read_text())
    size = vlm["llava"]["vision"]["image_size"]
    config = EpisodeConfig(
        frames=EMBEDDED["num_query_frames"], image_size=size, look=rooms["look"], walk=rooms["walk"]
    )
    export_synthetic(tmp_path / "data", [1000003], config, "test")
    argv = ["eval", "--data", str(tmp_path / "data"), "--split", "test", "--no-progress"]
    assert cli_main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli_main(["eval", "--seeds", "1000003:1000004", "--render-size", str(size),
                     "--no-progress", "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    from_data = read_cases(tmp_path / "a" / "predictions.jsonl")
    synthetic = read_cases(tmp_path / "b" / "predictions.jsonl")
    assert len(from_data) == len(synthetic) > 10
    for a, b in zip(from_data, synthetic, strict=True):
        assert (a.question, a.references, a.prediction) == (b.question, b.references, b.prediction)
        assert a.gt_position[:2] == pytest.approx(b.gt_position[:2], abs=1e-6)
        assert a.pred_positions[0] == pytest.approx(b.pred_positions[0], abs=1e-4)
    assert cli_main([*argv[:3], "--split", "missing"]) == 2


def test_cli_evaluates_on_textured_scans_rendered_at_another_size(tmp_path):
    """--look/--walk/--render-size: the rooms a bundle trained on them should be scored on."""
    from loc3r.scenes import EpisodeConfig, make_episode

    out = tmp_path / "run"
    argv = ["eval", "--seeds", "1000003:1000004", "--look", "textured", "--walk", "scan",
            "--render-size", "160", "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    cases = read_cases(out / "predictions.jsonl")
    frames = EMBEDDED["num_query_frames"]
    scan = make_episode(1000003, EpisodeConfig(frames=frames, image_size=16, walk="scan"))
    sweep = make_episode(1000003, EpisodeConfig(frames=frames, image_size=16, walk="sweep"))
    assert [c.question for c in cases] == [r.question for r in scan.records]  # the scan's rooms
    assert [r.question for r in scan.records] != [r.question for r in sweep.records]
    # the report says how far the camera poses the model's tokens state are from the truth
    report = json.loads((out / "report.json").read_text())
    source = report["pose_source"]
    assert source["source"] == "geometric" and source["frames"] == frames - 1  # 1.. of one scan
    assert 0.0 <= source["median_position_error_m"] < 0.5
    assert 0.0 <= source["median_rotation_error_deg"] < 10.0
    text = (out / "report.md").read_text()
    assert f"Camera poses (geometric pose source, {frames - 1} frames" in text
    # synthetic rooms: the ceiling of the words and the true room, on the same questions
    ceiling = report["ceiling"]["answers"]
    assert ceiling["n"] == len(cases) and ceiling["em"] >= report["majority"]["answers"]["em"]
    assert "| ceiling (the words, the true room) |" in text and "EM (ceiling)" in text


def test_relative_pose_errors_compare_trajectories_from_their_first_frames():
    from scipy.spatial.transform import Rotation

    from loc3r.train.synthetic_data import relative_pose_errors

    def pose(x: float, yaw_deg: float) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
        out[0, 3] = x
        return out

    true = [pose(0, 0), pose(1, 10), pose(2, 20)]
    world = pose(5, 90)  # the estimate lives in another world frame: only relative poses count
    estimated = [world @ p for p in (pose(0, 0), pose(1.1, 10), pose(2, 23))]
    errors = relative_pose_errors(estimated, true)
    assert errors.shape == (2, 2)
    assert errors[0] == pytest.approx([0.1, 0.0], abs=1e-9)
    assert errors[1] == pytest.approx([0.0, 3.0], abs=1e-9)
