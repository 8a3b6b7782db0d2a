"""Answer decoding: end token, max_new_tokens, the loop guard, a closed answer vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig, load_llava_video
from loc3r.vlm.llava_video import repeating_period
from loc3r.vlm.loc3r_vlm import check_answer_vocabulary
from loc3r.vlm.static_decoding import rewind
from loc3r.vlm.tiny import build_tiny_loc3r

VOCABULARY = ["left", "right", "in front", "behind", "two chairs", "a red lamp"]


@pytest.fixture
def model(tokenizer_dir) -> Loc3rVLM:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return build_tiny_loc3r(tokenizer, Loc3rVLMConfig(cam_token_dim=24, max_new_tokens=12)).eval()


def scene(model: Loc3rVLM, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, 3, 56, 56, generator=g) * 2 - 1
    return model.encode_scene(pixels, torch.randn(3, 24, generator=g))


def rig(model: Loc3rVLM, script) -> list[int]:
    """Make the LM head prefer script(step) at each decoding step; returns the step log."""
    steps: list[int] = []

    def hook(_module, _inputs, output):
        token = script(len(steps))
        steps.append(token)
        boost = torch.zeros(output.shape[-1], dtype=output.dtype)
        boost[token] = 1e4
        return output + boost

    model.base.language_model.lm_head.register_forward_hook(hook)
    return steps


def word_token(model: Loc3rVLM) -> int:
    """An ordinary token whose text is a non-empty word."""
    return next(
        t
        for t in range(100, 400)
        if model.tokenizer.decode([t]).strip().isalpha() and t not in model.stop_ids
    )


def test_repeating_period():
    assert repeating_period([5, 7, 7, 7], 3) == 1
    assert repeating_period([1, 2, 1, 2, 1, 2], 3) == 2
    assert repeating_period([9, 1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == 3
    assert repeating_period([5, 7, 7], 3) == 0
    assert repeating_period([1, 2, 1, 2, 1], 3) == 0
    assert repeating_period([], 3) == 0


def test_stop_ids_are_the_end_tokens_and_the_eos(model):
    from loc3r.engine.models import DEFAULT_MODEL_DIR

    tokenizer = model.tokenizer
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert set(model.stop_ids) == ends | {tokenizer.eos_token_id}
    shipped = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR / "vlm"))
    assert shipped.eos_token == "<|im_end|>"  # what the embedded model ends answers with


def test_decoding_stops_at_the_end_token(model):
    word = word_token(model)
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = [word, word + 1, end, word + 2, word + 3]
    steps = rig(model, lambda i: script[i])
    text, _ = model.answer(scene(model), "What is on my left?", "I am by the door")
    assert len(steps) == 3  # no step after the end token
    assert text == model.tokenizer.decode([word, word + 1]).strip()


def test_decoding_stops_after_max_new_tokens(model):
    word = word_token(model)
    steps = rig(model, lambda i: word + i)  # never ends, never repeats
    model.answer(scene(model), "What is on my left?", "I am by the door")
    assert len(steps) == model.config.max_new_tokens == 12


def test_a_model_that_always_prefers_one_word_answers_it_once(model):
    word = word_token(model)
    steps = rig(model, lambda _: word)
    prefix = scene(model)
    text, _ = model.answer(prefix, "What is on my left?", "I am by the door")
    assert len(steps) == model.config.stop_repeats == 3  # stopped by the guard, not the limit
    assert text == model.tokenizer.decode([word]).strip() and text
    assert prefix.cache.get_seq_length() == prefix.length
    model.config.stop_repeats = 0  # without the guard: the loop the user saw
    looped, _ = model.answer(prefix, "What is on my left?", "I am by the door")
    assert looped == model.tokenizer.decode([word] * 12).strip()


def test_a_two_token_loop_is_cut_to_one_copy(model):
    word = word_token(model)
    steps = rig(model, lambda i: word + 5 if i == 0 else word + (i + 1) % 2)
    # word+5, word, word+1, word, word+1, word, word+1: stop after the third copy, keep one
    text, _ = model.answer(scene(model), "What is on my left?", "I am by the door")
    assert steps == [word + 5] + [word, word + 1] * 3
    assert text == model.tokenizer.decode([word + 5, word, word + 1]).strip()


def test_transformers_logits_processors_plug_in(model):
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

    word = word_token(model)
    rig(model, lambda _: word)
    embeds = model.embed(model.question_ids("What is on my left?"))[None]
    blocked = LogitsProcessorList([NoRepeatNGramLogitsProcessor(2)])
    tokens, _ = model.base.generate_greedy(embeds, max_new_tokens=6, logits_processor=blocked)
    assert tokens[:2] == [word, word] and len(tokens) == 6
    bigrams = list(zip(tokens, tokens[1:], strict=False))
    assert len(set(bigrams)) == len(bigrams)  # blocked, not stopped: the loop turns to others
    assert word in tokens[3:]


def guarded(tokens: list[int], repeats: int) -> list[int]:
    """`tokens` as the loop guard should leave them: cut at the first n-gram that ends them
    `repeats` times in a row, its first copy kept (written out here, not `repeating_period`)."""
    for end in range(1, len(tokens) + 1):
        for period in range(1, end // repeats + 1):
            tail = tokens[end - repeats * period : end]
            if tail == tail[:period] * repeats:
                return tokens[: end - (repeats - 1) * period]
    return tokens


def test_the_guard_keeps_the_reference_greedy_tokens(data_dir):
    root = data_dir / "llava_video_reference"
    d = dict(np.load(root / "reference_outputs.npz"))
    generation = json.loads((root / "tiny_llava_video" / "generation_config.json").read_text())
    settings = {  # the recorded greedy call: generation_config.json, as many tokens as recorded
        "max_new_tokens": d["greedy_token_ids"].shape[1],
        "stop_ids": tuple(np.atleast_1d(generation["eos_token_id"]).tolist()),
        "stop_repeats": 3,
    }
    torch.manual_seed(0)
    model, _ = load_llava_video(root / "tiny_llava_video", root / "siglip_vision_tower")
    embeds = torch.from_numpy(d["inputs_embeds"])
    penalty = generation["repetition_penalty"]
    tokens, steps = model.generate_greedy(embeds, repetition_penalty=penalty, **settings)
    # the guard leaves the recorded answer as it is, unless it loops: then it cuts it there
    assert tokens == guarded(d["greedy_token_ids"][0].tolist(), 3)
    assert len(steps) == len(tokens)
    plain, _ = model.generate_greedy(embeds, **settings)
    assert plain == guarded(d["greedy_token_ids_no_repetition_penalty"][0].tolist(), 3)


def brute_force_scores(model: Loc3rVLM, pixels, cams, question, situation) -> torch.Tensor:
    """log p(answer, <|im_end|>) by full forwards without any cache, one answer at a time."""
    video, _ = model.video_embeddings(pixels, cams)
    before, after = model.prefix_ids()
    context = after + model.situation_ids(situation) + model.question_ids(question)
    scores = []
    with torch.no_grad():
        for answer in VOCABULARY:
            ids = model.answer_ids(answer)
            embeds = torch.cat([model.embed(before), video, model.embed(context + ids)])[None]
            logp = model.base.language_model(inputs_embeds=embeds).logits[0].log_softmax(-1)
            rows = logp[-len(ids) - 1 : -1]
            scores.append(rows.gather(-1, torch.tensor(ids)[:, None]).sum())
    return torch.stack(scores)


@pytest.mark.parametrize("chunk", [64, 4])
def test_vocabulary_scores_equal_full_forwards_and_leave_the_cache(model, chunk):
    g = torch.Generator().manual_seed(3)
    pixels, cams = torch.rand(3, 3, 56, 56, generator=g) * 2 - 1, torch.randn(3, 24, generator=g)
    prefix = model.encode_scene(pixels, cams)
    situation, question = "I am sitting on the bed", "What is on my left?"
    before = model.localize(prefix, situation)
    model.set_answer_vocabulary(VOCABULARY)
    assert model.answer_vocabulary == tuple(VOCABULARY)
    with torch.inference_mode():
        situation_ids = model.situation_ids(situation)
        model._situate(prefix, situation_ids)
        scores = model._score_answers(
            prefix, model.question_ids(question), prefix.length + len(situation_ids), chunk=chunk
        )
        rewind(prefix.cache, prefix.length)
    expected = brute_force_scores(model, pixels, cams, question, situation)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.score_answers(prefix, question, situation), scores)
    text, pose = model.answer(prefix, question, situation)
    assert text == VOCABULARY[int(expected.argmax())]
    torch.testing.assert_close(pose.xy, before.xy)
    assert prefix.cache.get_seq_length() == prefix.length
    cache = prefix.cache  # transformers 5 keeps layers, 4 key_cache
    keys = cache.layers[0].keys if hasattr(cache, "layers") else cache.key_cache[0]
    assert keys.shape[0] == 1  # the batch is cut back to one row
    torch.testing.assert_close(model.localize(prefix, situation).xy, before.xy)


def test_vocabulary_answers_are_entries_even_for_a_loop_prone_model(model):
    word = word_token(model)
    rig(model, lambda _: word)
    model.set_answer_vocabulary(VOCABULARY)
    prefix = scene(model)
    for question in ("What is on my left?", "How many chairs?", "Where is the lamp?"):
        assert model.answer(prefix, question, "I am by the door")[0] in VOCABULARY
    model.config.do_sample = True
    assert model.answer(prefix, "What is on my left?", "")[0] in VOCABULARY
    model.set_answer_vocabulary(None)  # free decoding again
    model.config.do_sample = False
    assert model.answer_vocabulary is None
    free, _ = model.answer(prefix, "What is on my left?", "I am by the door")
    assert free == model.tokenizer.decode([word]).strip() and free not in VOCABULARY


@pytest.mark.parametrize(
    "bad", ["left", [], ["left", ""], ["left", "  "], ["left", 3], {"left": 1}, None, [None]]
)
def test_malformed_vocabularies_are_refused(bad):
    with pytest.raises(ValueError, match="answer vocabulary"):
        check_answer_vocabulary(bad)


def test_repeated_entries_are_dropped():
    assert check_answer_vocabulary(["left", "right", "left"]) == ("left", "right")


def test_free_answer_probability_is_its_token_sequence_probability(model):
    prefix = scene(model)
    question, situation = "What is on my left?", "I am by the door"
    model.config.max_new_tokens = 1  # one token: its probability is the first step's top softmax
    _, _, probability = model.answer_with_probability(prefix, question, situation)
    situation_ids = model.situation_ids(situation)
    with torch.no_grad():
        model._situate(prefix, situation_ids)
        offset = prefix.length + len(situation_ids)
        states = model._continue(prefix, model.question_ids(question), offset)
        head = model.base.language_model.lm_head
        first = head(states[0, -1]).float().softmax(-1)
    rewind(prefix.cache, prefix.length)
    assert probability == pytest.approx(float(first.max()), rel=1e-4)
    assert 0.0 < probability < 1.0
    model.config.max_new_tokens = 12
    word, end = word_token(model), model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    rig(model, lambda step: word if step == 0 else end)  # the end token counts too: ~1 * ~1
    text, _, certain = model.answer_with_probability(prefix, question, situation)
    assert text == model.tokenizer.decode([word]).strip() and certain == pytest.approx(1.0)
