"""Static-cache decoding answers exactly as the dynamic cache does, compiled or not."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoTokenizer

from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig
from loc3r.vlm.static_decoding import StaleSceneError, StaticDecoding, capacity, is_static
from loc3r.vlm.tiny import build_tiny_loc3r

QUESTIONS = [  # long, then short: the short ones run over the long one's stale cache slots
    ("I am sitting on the bed facing the window, with the lamp on my left and a chair behind "
     "me.", "What is on the table that is to my right, next to the red cabinet by the wall?"),
    ("I stand by the door.", "Which way is the sofa?"),
    ("I sit.", "Left?"),
]  # fmt: skip


@pytest.fixture
def model(tokenizer_dir) -> Loc3rVLM:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, max_new_tokens=10))
    model.stop_ids = ()  # random weights: decode all max_new_tokens, every slot gets written
    return model.eval()


def scene(model: Loc3rVLM, seed: int, frames: int = 3):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(frames, 3, 56, 56, generator=g) * 2 - 1
    return model.encode_scene(pixels, torch.randn(frames, 24, generator=g))


def replies(model: Loc3rVLM, seed: int = 0, prefix=None) -> list:
    """Answers, probabilities and poses of every question, then a localize, on one scene."""
    prefix = prefix or scene(model, seed)
    out = []
    for situation, question in QUESTIONS:
        text, pose, probability = model.answer_with_probability(prefix, question, situation)
        out.append((text, probability, pose.xy.tolist(), pose.yaw))
        located = model.localize(prefix, situation)
        out.append((located.xy.tolist(), located.yaw))
    return out


def assert_same(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if len(a) == 4:
            assert a[0] == b[0]  # the same tokens
            assert a[1] == pytest.approx(b[1], rel=1e-4, abs=1e-30)
            assert a[2] == pytest.approx(b[2], abs=1e-5) and a[3] == pytest.approx(b[3], abs=1e-5)
        else:
            assert a[0] == pytest.approx(b[0], abs=1e-5) and a[1] == pytest.approx(b[1], abs=1e-5)


def test_static_cache_answers_as_the_dynamic_cache(model):
    expected = replies(model)
    assert any(len(r) == 4 and r[0] for r in expected)  # something was decoded
    model.use_static_decoding(StaticDecoding(extra_tokens=256, capacity_multiple=128))
    prefix = scene(model, 0)
    assert is_static(prefix.cache)
    assert capacity(prefix.cache) % 128 == 0 and capacity(prefix.cache) >= prefix.length + 256
    assert_same(replies(model), expected)
    model.use_static_decoding(None)
    assert not is_static(scene(model, 0).cache)


def test_scenes_of_one_frame_count_share_the_cache_shape(model):
    model.use_static_decoding(StaticDecoding(extra_tokens=100, capacity_multiple=64))
    a, b = scene(model, 1), scene(model, 2)
    assert capacity(a.cache) == capacity(b.cache)  # the compiled step is reused, not recompiled
    assert a.cache is not b.cache


def test_text_beyond_the_static_cache_is_a_clear_error_and_the_scene_survives(model):
    expected = replies(model)
    model.use_static_decoding(StaticDecoding(extra_tokens=48, capacity_multiple=1))
    prefix = scene(model, 0)
    with pytest.raises(ValueError, match="static KV cache holds"):
        model.answer_with_probability(prefix, "where " * 60, "I sit.")
    with pytest.raises(ValueError, match="static KV cache holds"):
        model.localize(prefix, "by the door " * 40)
    situation, question = QUESTIONS[2]
    text, _, probability = model.answer_with_probability(prefix, question, situation)
    assert (text, probability) == (expected[4][0], pytest.approx(expected[4][1], rel=1e-4))


def test_no_static_decoding_with_an_answer_vocabulary(model):
    model.set_answer_vocabulary(["left", "right"])
    with pytest.raises(ValueError, match="vocabulary"):
        model.use_static_decoding(StaticDecoding())
    model.set_answer_vocabulary(None)
    model.use_static_decoding(StaticDecoding())
    with pytest.raises(ValueError, match="static decoding"):
        model.set_answer_vocabulary(["left", "right"])


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_the_compiled_step_and_text_passes_trace_whole_and_answer_the_same(model, backend):
    """fullgraph=True fails on any graph break: what CUDA graphs would capture is one graph.

    Two modules are compiled: the one-token step (the LM with its head) and the text passes
    (the situation, the question: the decoder, its input padded to `text_bucket` tokens).

    eager checks the trace, aot_eager the functionalised in-place cache writes, inductor the
    generated kernels (C++ here, about 25 s to compile; on CUDA the bench adds
    mode="reduce-overhead", which records the step as a CUDA graph).
    """
    if backend == "inductor" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("inductor compiles C++ on the CPU and this machine has no C++ compiler")
    torch._dynamo.reset()
    expected = replies(model)
    settings = StaticDecoding(
        extra_tokens=256, capacity_multiple=128, compile={"backend": backend, "fullgraph": True}
    )
    model.use_static_decoding(settings)
    assert_same(replies(model), expected)
    assert_same(replies(model), expected)  # the compiled step again, on a new scene
    assert len(settings._compiled) == 2


def test_the_step_compiles_once_for_every_scene_of_one_shape(model):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    model.use_static_decoding(
        StaticDecoding(extra_tokens=256, capacity_multiple=128, compile={"backend": counter})
    )
    replies(model, seed=0)
    # the one-token step and the text pass: every situation and question is padded to 64 tokens
    assert counter.frame_count == 2 and counter.op_count > 0
    replies(model, seed=1)  # another scene, a new cache object of the same shape
    assert counter.frame_count == 2  # reused, not recompiled


def test_texts_are_padded_to_their_bucket_and_compile_once_per_bucket(model):
    """Texts of 1-8 tokens share one compiled shape, 9-16 the next; answers stay exact."""
    from torch._dynamo.testing import CompileCounter

    expected = replies(model)
    lengths = {
        len(ids)
        for situation, question in QUESTIONS
        for ids in (model.situation_ids(situation), model.question_ids(question))
    }
    buckets = {-(-n // 8) for n in lengths}
    assert len(buckets) >= 3  # the questions span several buckets
    torch._dynamo.reset()
    counter = CompileCounter()
    model.use_static_decoding(
        StaticDecoding(
            extra_tokens=256, capacity_multiple=128, compile={"backend": counter}, text_bucket=8
        )  # fmt: skip
    )
    assert_same(replies(model), expected)
    assert counter.frame_count == 1 + len(buckets)  # the step, and one text pass per bucket
    prefix = scene(model, 0)
    model.answer(prefix, *reversed(QUESTIONS[0]))  # padded passes leave the scene prefix
    assert int(prefix.cache.get_seq_length()) == prefix.length


def test_a_text_whose_padding_passes_the_cache_end_runs_eagerly(model):
    """No new compiled shape for the room left at the cache's end; still exact."""
    from torch._dynamo.testing import CompileCounter

    situation = QUESTIONS[0][0]
    expected = model.localize(scene(model, 0), situation)
    room = len(model.situation_ids(situation)) + 2  # the text fits; 64 padded tokens would not
    torch._dynamo.reset()
    counter = CompileCounter()
    model.use_static_decoding(
        StaticDecoding(extra_tokens=room, capacity_multiple=1, compile={"backend": counter})
    )
    prefix = scene(model, 0)
    assert capacity(prefix.cache) == prefix.length + room
    located = model.localize(prefix, situation)
    assert counter.frame_count == 0
    assert located.xy.tolist() == pytest.approx(expected.xy.tolist(), abs=1e-5)
    assert located.yaw == pytest.approx(expected.yaw, abs=1e-5)
    with pytest.raises(ValueError, match="static KV cache holds"):
        model.localize(prefix, situation + " And the lamp.")


def test_texts_past_the_compiled_length_run_eagerly(model):
    """compiled_text_tokens caps the compiled shapes (torch stops recompiling after 8)."""
    from torch._dynamo.testing import CompileCounter

    expected = replies(model)
    torch._dynamo.reset()
    counter = CompileCounter()
    settings = StaticDecoding(
        extra_tokens=256, capacity_multiple=128, compile={"backend": counter}, text_bucket=8,
        compiled_text_tokens=8,
    )  # fmt: skip
    model.use_static_decoding(settings)
    assert_same(replies(model), expected)  # QUESTIONS[2]'s texts fit 8 tokens, the others not
    assert counter.frame_count == 2  # the one-token step and the 8-token text pass


def test_after_each_question_the_cache_holds_the_scene_again(model):
    model.use_static_decoding(StaticDecoding(extra_tokens=256, capacity_multiple=128))
    prefix = scene(model, 0)
    assert int(prefix.cache.get_seq_length()) == prefix.length
    model.answer(prefix, *reversed(QUESTIONS[0]))
    assert int(prefix.cache.get_seq_length()) == prefix.length
    model.localize(prefix, QUESTIONS[1][0])
    assert int(prefix.cache.get_seq_length()) == prefix.length


def test_caches_are_pooled_and_a_scene_whose_cache_was_taken_is_refused(model):
    expected = {seed: replies(model, seed) for seed in (1, 2, 3)}
    model.use_static_decoding(StaticDecoding(extra_tokens=256, capacity_multiple=128, pool_size=2))
    first, second = scene(model, 1), scene(model, 2)
    assert first.cache is not second.cache
    keys = first.cache.layers[0].keys.data_ptr()
    third = scene(model, 3)  # the pool is full: the oldest scene's cache, reset in place
    assert third.cache is first.cache and third.cache.layers[0].keys.data_ptr() == keys
    with pytest.raises(StaleSceneError, match="encode the scene again"):
        model.answer(first, "Which way?", "I sit.")
    with pytest.raises(StaleSceneError):
        model.localize(first, "I sit.")
    assert int(third.cache.get_seq_length()) == third.length  # the refusal left it alone
    for seed, prefix in ((2, second), (3, third)):
        assert_same(replies(model, prefix=prefix), expected[seed])


def test_a_minimum_capacity_gives_shorter_scenes_the_full_scenes_shape(model):
    settings = StaticDecoding(extra_tokens=64, capacity_multiple=16)
    model.use_static_decoding(settings)
    full = scene(model, 0, frames=3)
    settings.min_capacity = capacity(full.cache)
    short = scene(model, 1, frames=1)
    assert short.length < full.length and capacity(short.cache) == capacity(full.cache)
