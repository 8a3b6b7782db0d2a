"""The Loc3R-VLM trainer: config parsing, schedule, exact resume, 2-process DDP equivalence."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from loc3r.train.batches import SceneBatches, batch_indices, scene_chunks
from loc3r.train.config import TrainConfig, lr_at
from loc3r.train.pipeline import prepare_run
from loc3r.train.train_vlm import Trainer

TINY = [
    "--train_episodes=4", "--eval_episodes=1", "--frames=2", "--image_size=56", "--hidden=32",
    "--layers=1", "--heads=2", "--kv_heads=1", "--intermediate=64", "--vision_hidden=16",
    "--vision_layers=1", "--vocab_size=320", "--batch_size=4", "--micro_batch=2",
    "--warmup_steps=2", "--lr=3e-3", "--log_every=1", "--save_every=1000",
]  # fmt: skip


def test_config_layers_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nlr: 0.01\n")
    config = TrainConfig.from_args(["--config", str(path), "--lr=0.5", "--use_camera_tokens=false"])
    assert (config.steps, config.lr, config.use_camera_tokens) == (7, 0.5, False)
    with pytest.raises(SystemExit, match="unknown key"):
        TrainConfig.from_args(["--nope=1"])
    with pytest.raises(SystemExit, match="removed on 2026-12-04"):  # options the docs still name
        TrainConfig.from_args(["--position_readout=attended_layout"])
    with pytest.raises(SystemExit, match="takes int"):
        TrainConfig.from_args(["--steps=many"])
    path.write_text("stepz: 3\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        TrainConfig.from_args(["--config", str(path)])


def test_schedule_and_batches_are_pure_functions():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1) and lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0) and lr_at(100, config) == pytest.approx(0.1)
    assert lr_at(55, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    first = batch_indices(3, 20, 4, seed=1)
    assert first == batch_indices(3, 20, 4, seed=1) and len(set(first)) == 4
    epoch = [i for step in range(5) for i in batch_indices(step, 20, 4, seed=1)]
    assert sorted(epoch) == list(range(20))  # each sample once per epoch


def room_samples(sizes: list[int], situations_per_room: int = 3) -> list:
    """TrainSample stand-ins: rooms (shared pixel_values objects) of `sizes` questions."""
    from types import SimpleNamespace

    out = []
    for room, size in enumerate(sizes):
        pixels, tokens = torch.zeros(1), torch.zeros(1)
        for k in range(size):
            situation = f"room {room} situation {k % situations_per_room}"
            out.append(SimpleNamespace(pixel_values=pixels, camera_tokens=tokens,
                                       situation=situation))  # fmt: skip
    return out


def test_scene_chunks_span_situations_and_fill_up_with_other_questions():
    situations = ["A", "A", "B", "B", "A", "C", "C"]
    chunks = scene_chunks([[0, 1, 2, 3]], situations, 2, np.random.default_rng(0))
    assert [sorted(situations[i] for i in c) for c in chunks] == [["A", "B"], ["A", "B"]]
    for seed in range(20):  # 3 questions in chunks of 2: the last one filled with another one
        chunks = scene_chunks([[4, 5, 6]], situations, 2, np.random.default_rng(seed))
        assert len(chunks) == 2 and all(len(set(c)) == 2 for c in chunks)
        assert {situations[i] for i in chunks[0]} == {"A", "C"}  # one of each situation first
        assert set(chunks[0]) | set(chunks[1]) == {4, 5, 6}
    chunks = scene_chunks([[4]], situations, 3, np.random.default_rng(0))
    assert chunks == [[4, 4, 4]]  # a room with fewer questions than a chunk repeats them


def test_scene_batches_take_whole_rooms_and_resume_across_epochs():
    samples = room_samples([7, 3, 1, 5])  # 4 + 2 + 1 + 3 = 10 chunks of 2: 3 steps of 3 rooms
    batches = SceneBatches(samples, batch=6, per_scene=2, seed=3)
    assert batches.steps_per_epoch == 3
    room = {i: id(s.pixel_values) for i, s in enumerate(samples)}
    seen = []
    for step in range(7):  # into the third epoch
        batch = batches(step)
        assert len(batch) == 6
        for pair in (batch[0:2], batch[2:4], batch[4:6]):
            assert room[pair[0]] == room[pair[1]]  # a chunk is one room's
        fresh = SceneBatches(samples, batch=6, per_scene=2, seed=3)  # as after a resume
        assert fresh(step) == batch
        if step < 3:
            seen += batch
    assert len(set(seen)) >= 14  # 9 of the 10 chunks: 16 questions, one chunk waits
    assert batches(3) != batches(0)  # the next epoch has another order
    assert SceneBatches(samples, 6, 2, seed=4)(0) != batches(0)
    with pytest.raises(ValueError, match="fewer than the 4 a batch of 8 takes"):
        SceneBatches(room_samples([3]), batch=8, per_scene=2, seed=0)
    with pytest.raises(ValueError, match="divide the batch"):
        SceneBatches(samples, batch=6, per_scene=4, seed=0)


def test_packed_scene_batches_and_threads_in_training(tmp_path, monkeypatch):
    config = TrainConfig.from_args([f"--out={tmp_path / 'a'}", "--steps=6", *TINY,
                                    "--questions_per_scene=2", "--train_threads=1"])  # fmt: skip
    run = prepare_run(config, progress=False)
    trainer = Trainer(config, run.model, run.train_samples)
    seen, rows = [], []
    step = trainer.train_step
    forward = trainer.model.forward_train

    def counting_step():
        seen.append(torch.get_num_threads())
        return step()

    def counting_forward(batch):
        rows.append((len(batch), len({id(s.pixel_values) for s in batch})))
        return forward(batch)

    monkeypatch.setattr(trainer, "train_step", counting_step)
    monkeypatch.setattr(trainer.model, "forward_train", counting_forward)
    torch.set_num_threads(2)
    try:
        history = trainer.fit(progress=False)
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(1)
    assert seen == [1] * 6 and losses(history)[-1] < losses(history)[0]
    assert rows == [(2, 1)] * 12  # each micro-batch: 2 questions of one room, one packed row
    with pytest.raises(ValueError, match="questions_per_scene"):
        Trainer(TrainConfig.from_args([*TINY, "--questions_per_scene=3"]), run.model, [])


def losses(history):
    return [h["loss"] for h in history]


def test_resume_continues_the_exact_loss_curve(tmp_path):
    config = TrainConfig.from_args([f"--out={tmp_path / 'a'}", "--steps=6", *TINY])
    run = prepare_run(config, progress=False)
    straight = losses(Trainer(config, run.model, run.train_samples).fit(progress=False))
    assert straight[-1] < straight[0]

    config_b = TrainConfig.from_args([f"--out={tmp_path / 'b'}", "--steps=3", *TINY])
    run_b = prepare_run(config_b, progress=False)
    first = Trainer(config_b, run_b.model, run_b.train_samples)
    part1 = losses(first.fit(progress=False))
    checkpoint = first.save()
    config_c = TrainConfig.from_args([f"--out={tmp_path / 'b'}", "--steps=6", *TINY])
    run_c = prepare_run(config_c, progress=False)  # a fresh model, as after a crash
    second = Trainer(config_c, run_c.model, run_c.train_samples)
    second.resume(checkpoint)
    part2 = losses(second.fit(progress=False))
    assert part1 + part2 == pytest.approx(straight, rel=1e-6, abs=1e-7)


def test_vlm_init_continues_from_a_saved_model_and_refuses_another_size(tmp_path, monkeypatch):
    config = TrainConfig.from_args(
        [f"--out={tmp_path / 'a'}", "--steps=3", "--egocentric_weight=0.5", *TINY]
    )
    run = prepare_run(config, progress=False)
    history = Trainer(config, run.model, run.train_samples).fit(progress=False)
    saved = tmp_path / "a" / "final"
    run.model.save_pretrained(saved)  # with its tokenizer, which the continued run takes

    args = [f"--out={tmp_path / 'b'}", "--steps=3", f"--vlm_init={saved}", "--seed=5", *TINY]
    resumed = prepare_run(TrainConfig.from_args([*args, "--situation_weight=0.9"]), progress=False)
    for name, value in run.model.state_dict().items():  # its weights, not the seed's
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)
    assert resumed.model.config.weights.situation == 0.9  # the run's loss weights
    # without the egocentric loss (the run's default weight, 0) its head stays, untrained
    assert resumed.model.egocentric_head is not None
    assert resumed.model.config.weights.egocentric == 0.0
    before = resumed.model.egocentric_head.weight.detach().clone()
    Trainer(TrainConfig.from_args(args), resumed.model, resumed.train_samples).fit(progress=False)
    torch.testing.assert_close(resumed.model.egocentric_head.weight, before)
    assert not any(p.requires_grad for p in resumed.model.base.vision_tower.parameters())
    assert resumed.model.tokenizer.convert_tokens_to_ids("<Pos>") < len(resumed.model.tokenizer)
    assert history  # (the saved model was trained)

    wider = [a for a in args if not a.startswith("--hidden=")] + ["--hidden=48"]
    import loc3r.train.pipeline as pipeline

    def no_rooms(*args, **kwargs):
        raise AssertionError("rendered rooms for a run whose model cannot be built")

    monkeypatch.setattr(pipeline, "build_episodes", no_rooms)  # it fails before any room
    with pytest.raises(
        ValueError, match=r"vlm_init=.*differs from the run's in \['text.hidden_size'"
    ):
        prepare_run(TrainConfig.from_args(wider), progress=False)
    for other in (f"--base_model_dir={saved}", f"--tokenizer_dir={saved}", "--vision_init=t"):
        with pytest.raises(ValueError, match="vlm_init continues a tiny model"):
            prepare_run(TrainConfig.from_args([*args, other]), progress=False)


def test_a_continued_run_trains_the_vision_tower_only_when_asked(tmp_path):
    config = TrainConfig.from_args([f"--out={tmp_path / 'a'}", "--steps=1", *TINY])
    run = prepare_run(config, progress=False)
    saved = tmp_path / "a" / "final"
    run.model.save_pretrained(saved)
    tower = {k: v.clone() for k, v in run.model.base.vision_tower.state_dict().items()}

    def continued(name: str, *extra: str):
        args = [f"--out={tmp_path / name}", "--steps=3", f"--vlm_init={saved}", *TINY, *extra]
        cont = TrainConfig.from_args(args)
        resumed = prepare_run(cont, progress=False)
        Trainer(cont, resumed.model, resumed.train_samples).fit(progress=False)
        return resumed.model

    frozen = continued("frozen")
    for name, value in frozen.base.vision_tower.state_dict().items():
        torch.testing.assert_close(value, tower[name], msg=name)
    trained = continued("trained", "--train_vision_tower=True")
    assert all(p.requires_grad for p in trained.base.vision_tower.parameters())
    moved = [
        name
        for name, value in trained.base.vision_tower.state_dict().items()
        if not torch.equal(value, tower[name])
    ]
    prefix = trained.base.vision_body_prefix  # "vision_model." under transformers 4
    assert f"{prefix}embeddings.patch_embedding.weight" in moved  # the first layer learns
    trained.save_pretrained(tmp_path / "trained_final")  # what a bundle ships: the trained tower
    reloaded = type(trained).from_pretrained(tmp_path / "trained_final")
    for name, value in trained.base.vision_tower.state_dict().items():
        torch.testing.assert_close(reloaded.base.vision_tower.state_dict()[name], value, msg=name)


def test_a_continued_run_shows_the_tower_larger_frames_pooled_into_the_same_cells(tmp_path, capsys):
    config = TrainConfig.from_args([f"--out={tmp_path / 'a'}", "--steps=1", *TINY])
    run = prepare_run(config, progress=False)  # 56 px: 4x4 patches pooled 2x2 into 2x2 cells
    saved = tmp_path / "a" / "final"
    run.model.save_pretrained(saved)
    before = run.model.base.vision_tower.state_dict()
    args = [f"--out={tmp_path / 'b'}", "--steps=2", f"--vlm_init={saved}", *TINY,
            "--image_size=112", "--pool_stride=4", "--pool_mode=average"]  # fmt: skip
    cont = TrainConfig.from_args(args)
    capsys.readouterr()
    resumed = prepare_run(cont, progress=False)
    assert "frames of 56 px pooled by 2 (bilinear) become 112 px pooled by 4 (average)" in (
        capsys.readouterr().err
    )  # a continued run that changes them says so
    base = resumed.model.base.config
    assert (base.grid, base.pooled_grid, base.mm_spatial_pool_mode) == (8, 2, "average")
    assert base.tokens_per_frame == run.model.base.config.tokens_per_frame
    after = resumed.model.base.vision_tower.state_dict()
    table = f"{resumed.model.base.vision_body_prefix}embeddings.position_embedding.weight"
    assert after[table].shape == (64, before[table].shape[1])
    for name, value in before.items():  # every other weight as it was
        if name != table:
            torch.testing.assert_close(after[name], value, msg=name)
    pixels = torch.zeros(1, 3, 112, 112)
    assert resumed.model.base.frame_tokens(pixels).shape[1] == base.tokens_per_frame
    Trainer(cont, resumed.model, resumed.train_samples).fit(progress=False)
    resumed.model.save_pretrained(tmp_path / "b" / "final")
    reloaded = type(resumed.model).from_pretrained(tmp_path / "b" / "final")
    assert reloaded.base.config.vision["image_size"] == 112
    assert (reloaded.base.config.pool_stride, reloaded.base.config.mm_spatial_pool_mode) == (
        4, "average"
    )  # fmt: skip
    bad = TrainConfig.from_args([*args[:-2], "--pool_stride=3", "--pool_mode=average"])
    with pytest.raises(ValueError, match="8x8 patch grid does not pool by 3"):
        prepare_run(bad, progress=False)


def test_the_resized_position_table_is_the_old_one_resampled_as_an_image(tokenizer_dir):
    from transformers import AutoTokenizer

    from loc3r.train.pipeline import resize_vision_tower
    from loc3r.vlm.tiny import build_tiny_loc3r

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = build_tiny_loc3r(tokenizer, image_size=56)  # a 4x4 table
    table = model.base.vision_body.embeddings.position_embedding.weight
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    with torch.no_grad():  # channel 0 grows down the rows, 1 falls along the columns, 2 constant
        table.fill_(0.7)
        table[:, 0] = 3.0 * rows.flatten()
        table[:, 1] = -2.0 * cols.flatten() + 1.0
    resize_vision_tower(model, 56)  # the same grid: the same table
    same = model.base.vision_body.embeddings.position_embedding.weight.detach()
    torch.testing.assert_close(same, table.detach())
    resize_vision_tower(model, 112)
    new = model.base.vision_body.embeddings.position_embedding.weight.detach().reshape(8, 8, -1)
    assert new.shape[-1] == table.shape[1]
    torch.testing.assert_close(new[..., 0], new[:, :1, 0].expand(8, 8))  # rows only
    assert (new[1:, 0, 0] > new[:-1, 0, 0]).all()
    torch.testing.assert_close(new[..., 1], new[:1, :, 1].expand(8, 8))  # columns only
    assert (new[0, 1:, 1] < new[0, :-1, 1]).all()
    torch.testing.assert_close(new[..., 2:], torch.full_like(new[..., 2:], 0.7))
    # the corners' cells lie outside the old centres: near the old corners' values
    assert abs(float(new[0, 0, 0])) < 0.5 and abs(float(new[-1, 0, 0]) - 9.0) < 0.5
    assert model.base.config.vision["image_size"] == 112
    with pytest.raises(ValueError, match="not a whole number of 14 px patches"):
        resize_vision_tower(model, 100)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_workers(marker: str) -> None:
    """SIGKILL every process whose command line has `marker` (workers run in their own session)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _torchrun(argv: list[str], env: dict, marker: str, timeout: float = 300.0) -> tuple[int, str]:
    """Run torchrun; on a timeout kill it and its workers (found by `marker`, e.g. the out dir)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _kill_workers(marker)  # else an orphaned worker keeps the pipes open and this waits
        _, stderr = proc.communicate(timeout=60)
        return -1, f"torchrun timed out after {timeout} s\n{stderr}"
    return proc.returncode, stderr


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_matches_one_process(tmp_path, parallel):
    single = tmp_path / "single"
    double = tmp_path / parallel
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RANK", None)
    base = [sys.executable, "-m"]
    subprocess.run(
        [*base, "loc3r.train.train_vlm", f"--out={single}", "--steps=5", *TINY],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    env["LOC3R_DIST_TIMEOUT_MIN"] = "2"  # a stuck collective fails instead of hanging
    code, stderr = _torchrun(
        [*base, "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "loc3r.train.train_vlm", f"--out={double}",
         "--steps=5", f"--parallel={parallel}", *TINY],
        env, f"--out={double}",
    )  # fmt: skip
    assert code == 0, stderr[-3000:]

    def curve(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows]

    one, two = curve(single), curve(double)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) / abs(a) < 1e-4
    a = torch.load(single / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(double / "checkpoint.pt", weights_only=True)["model"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4


def test_loss_parts_are_averaged_over_the_micro_batches_that_had_them():
    from loc3r.train.train_vlm import mean_parts

    cpu = torch.device("cpu")
    # two micro-batches; only the first had a situated sample (pos)
    sums, counts = {"loss": 3.0, "ce": 1.0, "pos": 0.5}, {"loss": 2, "ce": 2, "pos": 1}
    assert mean_parts(sums, counts, cpu, ddp=False) == {"loss": 1.5, "ce": 0.5, "pos": 0.5}
    with pytest.raises(ValueError, match="not in LOSS_PARTS"):
        mean_parts({"loss": 1.0, "made_up": 1.0}, {"loss": 1, "made_up": 1}, cpu, ddp=False)


def _rank_reports(rank: int, port: int, out: str) -> None:
    """A gloo rank: rank 0 had a situated sample (pos), rank 1 had none."""
    import torch.distributed as dist

    from loc3r.train.train_vlm import mean_parts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 0:
            sums, counts = {"loss": 2.0, "ce": 1.0, "pos": 0.8}, {"loss": 1, "ce": 1, "pos": 1}
        else:
            sums, counts = {"loss": 4.0, "ce": 3.0}, {"loss": 1, "ce": 1}
        means = mean_parts(sums, counts, torch.device("cpu"), ddp=True)
        Path(out, f"{rank}.json").write_text(json.dumps(means))
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_loss_parts_report_the_same_global_means(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_reports, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0] == reports[1] == {"loss": 3.0, "ce": 2.0, "pos": 0.8}


def test_lora_trains_adapters_only_and_merges_into_plain_weights(tmp_path):
    from loc3r.train.train_vlm import merge_lora
    from loc3r.vlm import Loc3rVLM

    config = TrainConfig.from_args([f"--out={tmp_path}", "--steps=3", "--lora_rank=4", *TINY])
    run = prepare_run(config, progress=False)
    llm = run.model.base.language_model
    frozen = llm.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    trainer = Trainer(config, run.model, run.train_samples)
    names = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names) and any(n.startswith("f_pos") for n in names)
    assert not any(".base_layer." in n for n in names)  # the LLM's own weights stay frozen
    history = trainer.fit(progress=False)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert torch.equal(llm.model.layers[0].self_attn.q_proj.base_layer.weight, frozen)
    merged = merge_lora(run.model.state_dict(), config)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    run.model.save_pretrained(tmp_path / "final", merged)
    plain = Loc3rVLM.from_pretrained(tmp_path / "final")  # strict load: plain keys only
    samples = run.train_samples[:2]
    with torch.no_grad():
        want = run.model.eval()(samples)["loss"]
        got = plain.eval()(samples)["loss"]
    assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_training_from_a_dataset_in_our_format(tmp_path):
    from loc3r.datasets.format import export_synthetic
    from loc3r.scenes import EpisodeConfig

    data = tmp_path / "data"
    episodes = EpisodeConfig(frames=3, image_size=56)
    export_synthetic(data, [11, 12], episodes, "train")
    export_synthetic(data, [1000011], episodes, "val")
    config = TrainConfig.from_args(
        [f"--out={tmp_path / 'run'}", f"--data_root={data}", "--steps=2", *TINY]
    )
    run = prepare_run(config, progress=False)
    assert len(run.train_episodes) == 2 and len(run.eval_episodes) == 1
    assert all(e.bev_mask.any() for e in run.train_episodes)  # layout targets from stored depth
    history = Trainer(config, run.model, run.train_samples).fit(progress=False)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_the_paper_recipe_config_is_valid():
    from conftest import REPO_ROOT

    path = REPO_ROOT / "loc3r_ros" / "config" / "train_paper.yaml"
    config = TrainConfig.from_args(["--config", str(path), "--base_model_dir=/models/llava"])
    assert (config.lr, config.batch_size, config.epochs, config.frames) == (1e-5, 64, 1.0, 32)
    assert (config.layout_weight, config.situation_weight, config.ori_weight) == (0.05, 0.075, 3.5)
    assert config.parallel == "fsdp" and not config.train_vision_tower
    assert config.base_model_dir == "/models/llava"  # the command line overrides the file


def test_synthetic_samples_carry_the_patches_of_their_situation_objects():
    from loc3r.scenes import EpisodeConfig, make_episode, object_cover
    from loc3r.train.synthetic_data import MIN_OBJECT_COVER, build_episodes

    config = EpisodeConfig(frames=4, image_size=56, situations=2)
    (data,) = build_episodes([5], config, None, grid=2, progress=False)
    episode = make_episode(5, config)
    samples = data.samples(56)
    assert len(samples) == len(episode.records) > 0
    for record, s in zip(episode.records, samples, strict=True):
        # views="first" (loc3r.eval.bounds) keeps exactly the first frame that shows the object
        for key, every in (("anchor_id", s.anchor_cells), ("target_id", s.target_cells)):
            first = data.cells_of(record, key, views="first")
            shown = every.flatten(1).any(1).nonzero().flatten().tolist()
            if not shown:  # out of view (or under MIN_OBJECT_COVER in every cell)
                assert not first.any()
                continue
            assert torch.equal(first[shown[0]], every[shown[0]]) and first[shown[0]].any()
            assert first.sum() == every[shown[0]].sum()
        pairs = ("anchor_id", s.anchor_cells), ("target_id", s.target_cells)
        for key, cells in (*pairs, ("object_id", s.question_cells)):
            if key not in record.fields:  # counting is about no single object
                assert cells is None and record.question_type == "counting"
                continue
            cover = np.stack([object_cover(f.object_id, 9, 2) for f in episode.frames])
            expected = cover[..., record.fields[key]] >= MIN_OBJECT_COVER
            assert cells.shape == (4, 2, 2) and cells.dtype == torch.bool
            assert np.array_equal(cells.numpy(), expected)
    directions = 0
    for record, s in zip(episode.records, samples, strict=True):  # the object, seen by the agent
        if record.question_type == "counting":
            assert s.object_offset is None
            continue
        ahead, left = s.object_offset.tolist()
        angle = math.degrees(math.atan2(left, ahead))
        if record.question_type == "direction" and min(abs(abs(angle) - b) for b in (45, 135)) > 1:
            word = "in front" if abs(angle) < 45 else "behind" if abs(angle) > 135 else None
            assert record.answers[0] == (word or ("left" if angle > 0 else "right"))
            directions += 1
        distance = math.dist(record.position, record.fields["object_position"])
        assert math.hypot(ahead, left) == pytest.approx(distance, rel=1e-5)
    assert directions > 0
    record = episode.records[0]
    record.fields.pop("anchor_id")  # records of real datasets name no objects
    assert data.cells_of(record, "anchor_id") is None
    with pytest.raises(ValueError, match="views='last'"):
        data.cells_of(episode.records[1], "target_id", views="last")


def test_first_view_grounding_keeps_only_the_first_frame_showing_the_object():
    from loc3r.scenes.situations import QARecord
    from loc3r.train.synthetic_data import EpisodeData

    cover = torch.zeros(4, 2, 2, 2)  # (frames, g, g, objects)
    cover[1, 0, 1, 0], cover[2, :, 0, 0], cover[3, 1, 1, 0] = 0.5, 0.3, 0.05  # object 0
    cover[0, 0, 0, 1] = 1.0  # object 1, first frame only
    record = QARecord("direction", "s", "q", ["left"], (0.0, 0.0), 0.0, {"anchor_id": 0})
    data = EpisodeData(0, np.zeros((4, 8, 8, 3), np.uint8), torch.zeros(4, 4),
                       torch.zeros(4, 2, 2, 2), torch.ones(4, 2, 2, dtype=torch.bool), [record],
                       object_cover=cover)  # fmt: skip
    every = data.cells_of(record, "anchor_id")
    assert every.flatten(1).any(1).tolist() == [False, True, True, False]  # 0.05 < MIN cover
    first = data.cells_of(record, "anchor_id", views="first")
    expected = torch.zeros(4, 2, 2, dtype=torch.bool)
    expected[1, 0, 1] = True
    assert torch.equal(first, expected)
    record.fields["anchor_id"] = 1
    assert torch.equal(data.cells_of(record, "anchor_id", views="first"), cover[..., 1] > 0)


def test_oracle_camera_tokens_state_the_true_relative_poses():
    from types import SimpleNamespace

    from scipy.spatial.transform import Rotation

    from loc3r.scenes import EpisodeConfig, make_episode
    from loc3r.train.synthetic_data import build_episodes, oracle_camera_tokens

    config = EpisodeConfig(frames=4, image_size=56, situations=1)
    no_cut3r = SimpleNamespace(  # what build_episodes reads of a Perception for the oracle
        token_width=16, model=SimpleNamespace(config=SimpleNamespace(dec_embed_dim=16))
    )
    (data,) = build_episodes([7], config, no_cut3r, grid=2, progress=False, camera_prior="oracle")
    poses = [f.pose_c2w for f in make_episode(7, config).frames]
    assert data.camera_tokens.shape == (4, 16) and not data.camera_tokens[:, 12:].any()
    first_rotation, first_origin = poses[0][:3, :3], poses[0][:3, 3]
    for token, pose in zip(data.camera_tokens.numpy(), poses, strict=True):
        # R0^T (t - t0) and R0^T R: the pose in the first camera's frame
        np.testing.assert_allclose(token[:3], first_rotation.T @ (pose[:3, 3] - first_origin),
                                   atol=1e-5)  # fmt: skip
        rotation = token[3:12].reshape(3, 3)
        np.testing.assert_allclose(rotation, first_rotation.T @ pose[:3, :3], atol=1e-5)
    np.testing.assert_allclose(
        data.camera_tokens[0, :12].numpy(), [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1], atol=1e-6
    )
    turn = Rotation.from_matrix(data.camera_tokens[1:, 3:12].reshape(-1, 3, 3).double().numpy())
    assert np.all(turn.magnitude() > 0) and np.linalg.norm(data.camera_tokens[-1, :3]) > 0.1
    with pytest.raises(ValueError, match="at least 12"):
        oracle_camera_tokens(poses, 8)
    with pytest.raises(ValueError, match="camera_prior='gps'"):
        build_episodes([7], config, no_cut3r, grid=2, progress=False, camera_prior="gps")


def test_oracle_geometry_tokens_state_the_true_points_of_every_cell():
    from types import SimpleNamespace

    from loc3r.engine.perception import geometry_token_width, token_points
    from loc3r.scenes import EpisodeConfig, bev_targets, make_episode
    from loc3r.train.synthetic_data import build_episodes

    config = EpisodeConfig(frames=3, image_size=56, situations=1)
    width = geometry_token_width(2) + 4  # wider than the token needs: zero-padded
    geometry = SimpleNamespace(token_width=width, config=SimpleNamespace(camera_tokens="geometry"))
    (data,) = build_episodes([7], config, geometry, grid=2, progress=False, camera_prior="oracle")
    (poses,) = build_episodes([7], config, SimpleNamespace(token_width=width), grid=2,
                              progress=False, camera_prior="oracle")  # fmt: skip
    assert data.camera_tokens.shape == (3, width) and data.pose_errors is None
    torch.testing.assert_close(data.camera_tokens[:, :12], poses.camera_tokens[:, :12])
    assert not data.camera_tokens[:, geometry_token_width(2) :].any()
    episode = make_episode(7, config)
    first = episode.frames[0].pose_c2w
    for t, frame in enumerate(episode.frames):  # the cells' points, in the BEV: the true layout
        points = token_points(data.camera_tokens[t], 2).double().numpy()
        world = points @ first[:3, :3].T + first[:3, 3]
        xy, valid = bev_targets(frame, episode.frame, 2, mode="mean")
        assert valid.any()
        np.testing.assert_allclose(episode.frame.points(world)[:, :2].reshape(2, 2, 2)[valid],
                                   xy[valid], atol=1e-4)  # fmt: skip


def test_oracle_geometry_leaves_out_pixels_without_a_surface():
    from loc3r.engine.perception import geometry_token_width, token_points
    from loc3r.scenes.render import Frame
    from loc3r.train.synthetic_data import oracle_geometry_tokens

    depth = np.full((4, 4), 2.0, np.float32)
    depth[:2, :2] = 0.0  # the top-left cell sees nothing
    depth[2:, 2:] = np.inf  # the bottom-right cell sees nothing either
    depth[3, 0] = 4.0  # one pixel of the bottom-left cell twice as far
    K = np.array([[2.0, 0, 2], [0, 2.0, 2], [0, 0, 1]])  # noqa: N806
    frame = Frame(np.zeros((4, 4, 3), np.uint8), depth, np.full((4, 4), -1, np.int16),
                  np.eye(4), K)  # fmt: skip
    (token,) = oracle_geometry_tokens([frame], 2, geometry_token_width(2))
    points = token_points(token, 2).numpy()
    assert np.isfinite(points).all()
    np.testing.assert_array_equal(points[0], 0.0)  # no point: zero, as pool_pointmap writes
    np.testing.assert_array_equal(points[3], 0.0)
    np.testing.assert_allclose(points[1][2], 2.0)  # the top-right cell: all at 2 m
    np.testing.assert_allclose(points[2][2], (3 * 2.0 + 4.0) / 4)  # the mean of its pixels


def test_oracle_camera_prior_needs_synthetic_rooms(tmp_path):
    config = TrainConfig(out=str(tmp_path), data_root=str(tmp_path), camera_prior="oracle")
    with pytest.raises(ValueError, match="synthetic rooms"):
        prepare_run(config, progress=False)


def test_streamed_video_episodes_keep_their_frames_and_perceive_every_step():
    """stream_video: CUT3R and the pose source see the whole room scan, the VLM its frames."""
    from types import SimpleNamespace

    from loc3r.engine.frame_buffer import sample_uniform
    from loc3r.scenes import EpisodeConfig, make_episode
    from loc3r.scenes.episode import ROOM_SCAN_STEPS
    from loc3r.train.synthetic_data import build_episodes

    config = EpisodeConfig(frames=4, image_size=32, situations=2, walk="room_scan")
    streamed = replace(config, stream_video=True)
    plain, video = make_episode(7, config), make_episode(7, streamed)
    assert plain.video is None and plain.query_steps is None
    assert len(video.video) == ROOM_SCAN_STEPS
    assert video.query_steps == sample_uniform(4, ROOM_SCAN_STEPS) == [0, 8, 15, 23]
    assert video.stream() == (video.video, [0, 8, 15, 23])  # what a pose source streams
    assert plain.stream()[1] == [0, 1, 2, 3] and len(plain.stream()[0]) == 4
    for a, b, step in zip(plain.frames, video.frames, video.query_steps, strict=True):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.pose_c2w, b.pose_c2w)
        assert np.array_equal(video.video[step], b.rgb)
    assert [(r.situation, r.question, r.answers, r.position) for r in plain.records] == [
        (r.situation, r.question, r.answers, r.position) for r in video.records
    ]
    # a walk that renders every step streams exactly its frames
    sweep = make_episode(7, replace(streamed, walk="sweep"))
    assert sweep.query_steps == [0, 1, 2, 3] and len(sweep.video) == 4

    streams = []

    def run_fresh(images):  # a perception stub: each image's token is its place in the stream
        streams.append(len(images))
        return [SimpleNamespace(camera_token=torch.tensor([float(i)]), pose_c2w=np.eye(4))
                for i in range(len(images))]  # fmt: skip

    stub = SimpleNamespace(run_fresh=run_fresh)
    (data,) = build_episodes([7], streamed, stub, grid=2, progress=False)
    (kept,) = build_episodes([7], config, stub, grid=2, progress=False)
    assert streams == [ROOM_SCAN_STEPS, 4]
    assert data.camera_tokens.flatten().tolist() == [0.0, 8.0, 15.0, 23.0]
    assert kept.camera_tokens.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert data.frames.shape == kept.frames.shape  # the VLM sees the same four frames
    np.testing.assert_array_equal(data.frames, kept.frames)
