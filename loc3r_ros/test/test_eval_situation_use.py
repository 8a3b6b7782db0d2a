"""Whether a model's answers read the situation (loc3r.eval.situation_use)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_bundle import make_tiny_bundle

from loc3r.eval.situation_use import CHANGES, main, measure, swap_kind, total_variation


def test_swap_kind_replaces_one_kind_with_one_the_situation_does_not_name():
    text = "I am standing next to the red chair, facing the lamp"
    assert swap_kind(text, "anchor") == "I am standing next to the red desk, facing the lamp"
    assert swap_kind(text, "target") == "I am standing next to the red chair, facing the plant"
    # sitting: the next kind after the bed one can sit on that is not named (the sofa is)
    assert swap_kind("I am sitting on the bed, facing the sofa", "anchor") == (
        "I am sitting on the chair, facing the sofa"
    )
    assert swap_kind("I am standing next to the bed, facing the sofa", "anchor") == (
        "I am standing next to the table, facing the sofa"
    )
    assert swap_kind("I am sitting on the sofa, facing the door", "target") == (
        "I am sitting on the sofa, facing the bed"  # wraps round the catalogue
    )
    assert swap_kind("I am standing in the room", "anchor") is None  # not make_situation's
    assert swap_kind("I am sitting on the moon, facing the lamp", "anchor") is None
    with pytest.raises(ValueError, match="role"):
        swap_kind(text, "question")


def test_total_variation_runs_from_equal_to_disjoint():
    p = torch.tensor([0.5, 0.5, 0.0])
    assert total_variation(p, p) == 0.0
    assert total_variation(p, torch.tensor([0.0, 0.0, 1.0])) == 1.0
    assert total_variation(p, torch.tensor([0.5, 0.0, 0.5])) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def bundle_and_episodes(tmp_path_factory):
    from loc3r.engine.models import load_bundle
    from loc3r.scenes import EpisodeConfig, answer_vocabulary
    from loc3r.train.synthetic_data import build_episodes

    root = tmp_path_factory.mktemp("situation_use")
    directory = make_tiny_bundle(root / "b", seed=3)
    bundle = load_bundle(directory)
    bundle.model.vlm.set_answer_vocabulary(sorted(answer_vocabulary()))
    episodes = build_episodes(
        [1_000_000, 1_000_001], EpisodeConfig(frames=4, image_size=56), bundle.perception,
        grid=2, progress=False,
    )  # fmt: skip
    return bundle, episodes, directory


def test_a_model_that_reads_the_words_moves_and_one_that_does_not_stays(bundle_and_episodes):
    bundle, episodes, _ = bundle_and_episodes
    vlm = bundle.model.vlm
    with torch.inference_mode():
        report = measure(vlm, episodes, 56, progress=False)
    kinds = {r.question_type for e in episodes for r in e.records}
    assert set(report["total_variation"]) == kinds
    assert sum(report["questions"].values()) == sum(len(e.records) for e in episodes)
    for row in report["total_variation"].values():
        assert set(row) == set(CHANGES)
        assert all(0.0 < row[c] <= 1.0 for c in CHANGES)  # random weights read every token
    assert report["f_pos_moved_m"]["anchor word"] > 0.0

    scored = vlm.score_answers  # the same model with answers blind to the situation's words

    def blind(prefix, question, situation):
        return scored(prefix, question, "I am standing next to the bed, facing the bed")

    vlm.score_answers = blind
    try:
        with torch.inference_mode():
            blind_report = measure(vlm, episodes, 56, progress=False)
    finally:
        del vlm.score_answers
    for kind, row in blind_report["total_variation"].items():
        assert row["anchor word"] == row["target word"] == 0.0, kind
        assert row["another room's video"] > 0.0  # the video still moves them
    assert blind_report["f_pos_moved_m"] == report["f_pos_moved_m"]  # the pose still reads them


def test_command_writes_the_report_and_refuses_what_it_cannot_measure(
    bundle_and_episodes, capsys, tmp_path
):
    _, _, directory = bundle_and_episodes
    out = tmp_path / "use.json"
    args = ["--model", str(directory), "--image-size", "56", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:  # the tiny bundle declares no vocabulary
        main([*args, "--seeds", "1000000:1000002"])
    assert exit_info.value.code == 2
    assert "no closed answer vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--seeds", "1000000:1000001"])
    assert "two rooms or more" in capsys.readouterr().err
    bundle_json = directory / "bundle.json"
    meta = json.loads(bundle_json.read_text())
    from loc3r.scenes import answer_vocabulary

    bundle_json.write_text(json.dumps({**meta, "answer_vocabulary": sorted(answer_vocabulary())}))
    try:
        assert main([*args, "--seeds", "1000000:1000002", "--out", str(out)]) == 0
    finally:
        bundle_json.write_text(json.dumps(meta))
    report = json.loads(out.read_text())
    assert report["model"] == str(directory) and report["seconds"] > 0
    assert set(report["total_variation"]) and "| question type |" in capsys.readouterr().out
