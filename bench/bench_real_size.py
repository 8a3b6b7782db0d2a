"""Loc3R-VLM at its released size on one device: latency, memory and a training step, as JSON.

    python bench/bench_real_size.py --size released --device cuda --frames 32 --out bench.json
    python bench/bench_real_size.py --size tiny --device cpu --frames 4 --out tiny.json
    python bench/bench_real_size.py --size released --shapes-only --out shapes.json  # any host

`--size released` builds the released shapes with random weights: CUT3R 512 DPT (ViT-L encoder
1024 x 24 layers, two ViT-B decoders 768 x 12, state 768 tokens, local memory 256), the SigLIP
so400m/14 tower at 384 px (1152 wide, 27 layers of which LLaVA keeps 26), the 2-layer projector,
Qwen2-7B (3584 wide, 28 layers, 28 heads, 4 KV heads, MLP 18944; 151647 + 2 vocabulary rows:
LLaVA-Video's tokenizer plus <Pos> and <Ori>), f_cam and the Loc3R heads. Every module is built on
the meta device, then `to_empty` on the target device and a deterministic random fill there
(normal std 0.02, norms 1, biases 0), so the 7B weights never exist on the CPU. bfloat16 with
SDPA attention (CUT3R's heads stay float32, as CUT3R runs them). `--size tiny` runs the same code
at tiny shapes (float32), which is what the test suite does on the CPU. `--size released` refuses
any device but CUDA; `--shapes-only` builds on the meta device only and writes the shapes and
parameter counts (no memory, any host).

Text: the bench needs token ids, not a real vocabulary, and Qwen2's tokenizer cannot be
downloaded here, so the text goes through the small byte-level BPE tokenizer of the LLaVA-Video
fixture (Qwen2's ChatML special tokens, 560 entries; `--tokenizer` picks another). Its ids are
valid rows of the 151649-row embedding; the question is a text of ~50 tokens of that tokenizer.
Answers run greedy for exactly 20 new tokens (stop ids cleared, so random weights cannot stop
early).

Phases and figures (medians of a few repeats after warm-up; on CUDA timed with synchronisation):
- cut3r: streaming `Cut3r.step` over the frames (ms per frame, FPS; frame 0 excluded from the
  median because it reads no pose memory);
- cold: encode the scene (SigLIP, projector, f_cam, the LLM over the ~6.8k-token prefix) and
  answer (localize with <Pos>/<Ori>, then 20 greedy tokens), camera tokens already streamed;
  `cold_with_cut3r` adds CUT3R over all frames (what the paper times per query);
- warm_ask, warm_localize: `answer` / `localize` on the cached scene prefix;
- graphs (last, after the profile: compiling the 7B step may take a minute): the warm ask again
  with a static KV cache (`loc3r.vlm.static_decoding`), first eager ("static"), then with the
  one-token step and the text passes (situation, question; padded to 64 tokens) compiled
  ("graphs": torch.compile, on CUDA mode "reduce-overhead", i.e. CUDA graphs;
  `--graphs-backend` picks another backend). Each reports the first ask (compilation
  included), the warm median, the ask on a newly encoded scene (the cache pool cycled: replays
  or re-records), the warm localize and the cold query (encode, then ask) that way, peak
  memory, graphs compiled by dynamo, and whether its answer's tokens equal the dynamic cache's
  (bf16 kernels may differ in the last bits: reported, not required); the targets take the
  faster of each figure, dynamic or graphs;
- cut3r_graphs (right after cut3r): the CUT3R stream again with the frame compiled
  (`Cut3r.compile_step`; on CUDA mode "reduce-overhead": a CUDA graph per frame): the first
  stream (compilation included), then ms per frame and FPS of a second stream, and the largest
  difference of its camera tokens from the eager stream's, relative to their largest value (the
  FPS target takes it only within GRAPH_TOKEN_TOLERANCE);
- train: one `forward_train` + backward + AdamW step at the paper's setting: one sample of all
  frames (batch 1 per GPU), SigLIP and CUT3R frozen (camera tokens precomputed), the LLM's
  activation checkpointing on, AdamW on everything trainable (LLM, projector, newline, f_cam,
  heads). bfloat16 weights, gradients and AdamW states (no float32 master copy: the paper's
  multi-GPU recipe shards those); projected to the recipe's 4200 steps x 64 samples.
Peak memory: `torch.cuda.max_memory_allocated` per phase (reset before it), weights included; on
the CPU the process's peak RSS (monotone, not per phase). The JSON file is rewritten atomically
after every figure, so a run cut short keeps what it measured. `--profile-dir` adds, last,
torch.profiler tables of one CUT3R step, one warm ask, one warm localize and one cold query.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loc3r_ros"))

from loc3r.cut3r import Cut3r, Cut3rConfig  # noqa: E402
from loc3r.vlm import Loc3rVLM, Loc3rVLMConfig, TrainSample  # noqa: E402
from loc3r.vlm.checkpoint import materialise_buffers  # noqa: E402
from loc3r.vlm.llava_video import LlavaVideoConfig, LlavaVideoModel  # noqa: E402
from loc3r.vlm.static_decoding import StaticDecoding  # noqa: E402
from loc3r.vlm.tiny import tiny_llava_config  # noqa: E402

DEFAULT_TOKENIZER = ROOT / "loc3r_ros/test/data/llava_video_reference/tiny_llava_video"
PHASES = (
    "build", "cut3r", "cut3r_graphs", "cold", "warm_ask", "warm_localize", "train", "profile",
    "graphs",
)  # fmt: skip
GRAPH_TOKEN_TOLERANCE = 0.05  # cut3r_graphs counts for the FPS target within this (relative)
GIB = 2**30
RECIPE_STEPS = 4200  # paper: 1 epoch, ~4.2k steps
RECIPE_GLOBAL_BATCH = 64
TARGETS = {  # issue targets on an H200 (released size, CUDA)
    "cold_query_s": ("<=", 0.6),
    "warm_ask_s": ("<=", 0.15),
    "warm_localize_s": ("<=", 0.02),
    "cut3r_fps": (">=", 60.0),
}
PAPER = {
    "gpu": "RTX 4090 (24 GB)",
    "dtype": "float16",
    "frames": 32,
    "query_s": 2.6,
    "cut3r_s": 1.2,
    "llava_video_s": 1.3,
    "memory_gb": 20.3,
    "note": "the paper re-encodes the whole video (CUT3R + LLaVA-Video) for every query",
}
RTX4090_USABLE_GIB = 23.0  # assumption: 24 GiB minus ~1 GiB for the CUDA context and fragmentation
# Figures every complete run has (dotted paths into the JSON; positive and finite).
REQUIRED_FIGURES = (
    "build.seconds",
    "params.total",
    "weights_gib",
    "cut3r.ms_per_frame",
    "cut3r.fps",
    "cut3r.stream_s",
    "cut3r.peak_mem_gib",
    "cold.query_s",
    "cold.encode_scene_s",
    "cold.with_cut3r_s",
    "cold.peak_mem_gib",
    "warm_ask.seconds",
    "warm_ask.peak_mem_gib",
    "static.first_ask_s",
    "static.warm_ask_s",
    "graphs.first_ask_s",
    "graphs.warm_ask_s",
    "graphs.peak_mem_gib",
    "graphs.warm_localize_s",
    "graphs.cold_query_s",
    "cut3r_graphs.ms_per_frame",
    "cut3r_graphs.fps",
    "warm_localize.seconds",
    "warm_localize.peak_mem_gib",
    "train.step_s",
    "train.peak_mem_gib",
    "train.tokens_per_step",
    "train.tokens_per_s",
    "train.trainable_params",
    "projection.gpu_hours",
    "projection.seconds_per_sample",
)
QUESTION_WORDS = (
    "Standing here with the door behind me and the window on my right side, which object is "
    "the closest one to the small lamp on the wooden table, and what colour is the chair next "
    "to the bookshelf in the far corner of this room, as seen from where I am now standing?"
).split()
SITUATION = "I am sitting on the edge of the bed facing the window"
ANSWER = "the red lamp on the table"


# --------------------------------------------------------------------------------- sizes
def released_llava_config() -> LlavaVideoConfig:
    """LLaVA-Video-7B-Qwen2 (SigLIP so400m/14 at 384, Qwen2-7B) as lmms-lab's config.json has it.

    The vocabulary has the rows the loaded model has: len(tokenizer) = 151647 (LLaVA's builder
    cuts embed_tokens/lm_head from 152064 to it) plus <Pos> and <Ori>.
    """
    text = {
        "vocab_size": 151647 + 2,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "max_window_layers": 28,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    vision = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,  # the hub tower; LLaVA keeps 26 (select layer -2)
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 384,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    }
    return LlavaVideoConfig(text=text, vision=vision, mm_hidden_size=1152)


@dataclass
class SizeSpec:
    """Shapes of one bench size."""

    name: str
    cut3r: Cut3rConfig
    llava: LlavaVideoConfig
    loc3r: Loc3rVLMConfig
    cut3r_hw: tuple[int, int]  # CUT3R input (H, W): 512 long side of a 4:3 frame
    dtype: torch.dtype
    repeats: dict[str, int]


def size_spec(name: str, vocab_rows: int, dtype: torch.dtype | None) -> SizeSpec:
    """The released or tiny shapes (answers: 20 greedy tokens)."""
    loc3r_common = {"max_new_tokens": 20}
    if name == "released":
        return SizeSpec(
            name=name,
            cut3r=Cut3rConfig.dpt_512(),
            llava=released_llava_config(),
            loc3r=Loc3rVLMConfig(cam_token_dim=768, **loc3r_common),
            cut3r_hw=(384, 512),
            dtype=dtype or torch.bfloat16,
            repeats={"cold": 3, "cold_with_cut3r": 2, "warm_ask": 5, "warm_localize": 10,
                     "train": 2},
        )  # fmt: skip
    return SizeSpec(
        name=name,
        cut3r=Cut3rConfig.from_dict(
            {**Cut3rConfig.tiny().to_dict(), "head_type": "dpt", "patch_size": 16}
        ),  # the DPT head needs patch 16
        llava=tiny_llava_config(vocab_size=vocab_rows),
        loc3r=Loc3rVLMConfig(cam_token_dim=24, **loc3r_common),
        cut3r_hw=(48, 64),
        dtype=dtype or torch.float32,
        repeats={"cold": 2, "cold_with_cut3r": 1, "warm_ask": 2, "warm_localize": 3, "train": 1},
    )


# ---------------------------------------------------------------------------- reporting
class Report:
    """The JSON result, rewritten atomically (tmp file + rename) after every figure."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict = {"status": "running", "completed_phases": [], "errors": {}}

    def set(self, dotted: str, value) -> None:
        """Set `a.b.c` and write the file."""
        node = self.data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
        self.flush()

    def flush(self) -> None:
        """Write the JSON atomically (a reader never sees half a file)."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def figure(report_data: dict, dotted: str):
    """Value at a dotted path of the report (None when absent)."""
    node = report_data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# ------------------------------------------------------------------------ device helpers
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated GiB since `reset_peak` (CUDA); the process's peak RSS on the CPU."""
    if device.type == "cuda":
        synchronize(device)
        return round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB, 3)


def allocated_gib(device: torch.device) -> float | None:
    """Currently allocated GiB (CUDA only)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.memory_allocated(device) / GIB, 3)


class Deadline:
    """A soft time limit: phases and repeats stop starting once it has passed."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def timed(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    deadline: Deadline,
    warmup: int = 1,
) -> list[float]:
    """Seconds of `repeats` calls after `warmup` untimed ones (fewer if the deadline passes)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if times and deadline.passed():
            break
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------ building
def random_fill_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Deterministic random weights in place: normal(0, std), norms weight 1 / bias 0, biases 0."""
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            is_norm = "norm" in type(sub).__name__.lower()
            for name, param in sub.named_parameters(recurse=False):
                if is_norm:
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias":
                    param.zero_()
                else:
                    param.normal_(0.0, std, generator=generator)


def count(module: torch.nn.Module | None, trainable: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def build_on_meta(spec: SizeSpec, tokenizer) -> tuple[Cut3r, Loc3rVLM]:
    """Both models on the meta device (no memory), cast to the bench dtype."""
    with torch.device("meta"):
        cut3r = Cut3r(spec.cut3r)
        base = LlavaVideoModel(spec.llava)
        model = Loc3rVLM(base, tokenizer, spec.loc3r)
    cut3r.requires_grad_(False)
    if spec.dtype != torch.float32:
        cut3r.set_compute_dtype(spec.dtype)  # heads stay float32
        model.to(spec.dtype)
    return cut3r, model


def parameter_counts(cut3r: Cut3r, model: Loc3rVLM) -> dict[str, int]:
    heads = count(model) - count(model.base)  # f_cam, f_pos, f_ori, layout (and other) heads
    counts = {
        "cut3r": count(cut3r),
        "vision_tower": count(model.base.vision_tower),
        "projector": count(model.base.mm_projector) + model.base.image_newline.numel(),
        "llm": count(model.base.language_model),
        "loc3r_heads": heads,
    }
    counts["total"] = sum(counts.values())
    return counts


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def materialise(
    cut3r: Cut3r, model: Loc3rVLM, device: torch.device, seed: int
) -> tuple[Cut3r, Loc3rVLM]:
    """Allocate on `device` (to_empty), fill randomly there, rebuild the non-persistent buffers."""
    cut3r = cut3r.to_empty(device=device)
    model = model.to_empty(device=device)
    random_fill_(cut3r, seed)
    random_fill_(model, seed + 1)
    materialise_buffers(model.base)  # SigLIP position ids, Qwen2 RoPE tables (float32)
    model.base.to(device)  # moves only those rebuilt buffers
    model.stop_ids = ()  # random weights: always generate max_new_tokens
    return cut3r.eval(), model.eval()


def text_of_tokens(tokenizer, words: list[str], tokens: int) -> str:
    """The shortest prefix of `words` (cycled) with at least `tokens` tokens."""
    text = ""
    i = 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text = (text + " " + words[i % len(words)]).strip()
        i += 1
    return text


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host_cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return env


# ---------------------------------------------------------------------------- the phases
class Bench:
    """Holds the models and inputs; each phase method records its figures."""

    def __init__(self, args, report: Report) -> None:
        self.args = args
        self.report = report
        self.device = torch.device(args.device)
        self.deadline = Deadline(args.timeout_s)

    # -- build
    def build(self) -> None:
        from transformers import AutoTokenizer

        args, report = self.args, self.report
        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
        dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        spec = size_spec(args.size, len(self.tokenizer) + 2, dtype)
        self.spec = spec
        cut3r, model = build_on_meta(spec, self.tokenizer)
        counts = parameter_counts(cut3r, model)
        report.set("params", counts)
        report.set("weights_gib", round(weight_bytes(cut3r, model) / GIB, 3))
        llava = spec.llava
        per_frame = llava.tokens_per_frame + (1 if spec.loc3r.use_camera_tokens else 0)
        question = text_of_tokens(self.tokenizer, QUESTION_WORDS, args.question_tokens)
        self.question, self.situation = question, SITUATION
        before, after = model.prefix_ids()
        self.prefix_tokens = len(before) + args.frames * per_frame + len(after)
        self.train_tokens = (
            self.prefix_tokens
            + len(model.situation_ids(SITUATION))
            + len(model.question_ids(question))
            + len(model.answer_ids(ANSWER))
        )
        report.set(
            "shapes",
            {
                "frames": args.frames,
                "dtype": str(spec.dtype).replace("torch.", ""),
                "attention": llava.attn_implementation,
                "cut3r": {
                    "image_hw": list(spec.cut3r_hw),
                    "head": spec.cut3r.head_type,
                    "encoder": [
                        spec.cut3r.enc_embed_dim,
                        spec.cut3r.enc_depth,
                        spec.cut3r.enc_num_heads,
                    ],
                    "decoders": [
                        spec.cut3r.dec_embed_dim,
                        spec.cut3r.dec_depth,
                        spec.cut3r.dec_num_heads,
                    ],
                    "state_size": spec.cut3r.state_size,
                    "local_mem_size": spec.cut3r.local_mem_size,
                },  # fmt: skip
                "siglip": {
                    "image": llava.vision["image_size"],
                    "patch": llava.vision["patch_size"],
                    "hidden": llava.vision["hidden_size"],
                    "layers_kept": llava.vision_layers_kept,
                    "patches_per_frame": llava.grid**2,
                },
                "llm": {
                    k: llava.text[k]
                    for k in (
                        "hidden_size",
                        "num_hidden_layers",
                        "num_attention_heads",
                        "num_key_value_heads",
                        "intermediate_size",
                        "vocab_size",
                    )
                },  # fmt: skip
                "video_tokens_per_frame": per_frame,
                "scene_prefix_tokens": self.prefix_tokens,
                "situation_tokens": len(model.situation_ids(SITUATION)),
                "question_text_tokens": args.question_tokens,
                "question_tokens": len(model.question_ids(question)),  # with the ChatML wrapper
                "answer_new_tokens": spec.loc3r.max_new_tokens,
                "train_sequence_tokens": self.train_tokens,
                "tokenizer": f"{Path(args.tokenizer).name} ({len(self.tokenizer)} entries; "
                "only token ids matter)",
            },
        )
        if args.shapes_only:
            return
        cut3r, model = materialise(cut3r, model, self.device, args.seed)
        self.cut3r, self.model = cut3r, model
        generator = torch.Generator(device=self.device).manual_seed(args.seed + 2)
        height, width = spec.cut3r_hw
        size = llava.vision["image_size"]
        self.cut3r_frames = [
            torch.rand(1, 3, height, width, device=self.device, generator=generator) * 2 - 1
            for _ in range(args.frames)
        ]
        self.pixel_values = (
            torch.rand(args.frames, 3, size, size, device=self.device, generator=generator) * 2 - 1
        ).to(spec.dtype)
        synchronize(self.device)
        report.set("build.seconds", round(time.perf_counter() - start, 3))
        report.set("build.allocated_gib", allocated_gib(self.device))

    # -- CUT3R streaming
    def stream_cut3r(self, frames: list[torch.Tensor], per_frame: list[float] | None = None):
        """Camera tokens (T, Cd) of a fresh stream; per-frame seconds appended to `per_frame`."""
        state = self.cut3r.init_state(1)
        tokens = []
        for frame in frames:
            if per_frame is not None:
                synchronize(self.device)
                start = time.perf_counter()
            out = self.cut3r.step(state, frame)
            if per_frame is not None:
                synchronize(self.device)
                per_frame.append(time.perf_counter() - start)
            tokens.append(out.camera_token[0])
        return torch.stack(tokens)

    def cut3r_phase(self) -> None:
        report = self.report
        self.stream_cut3r(self.cut3r_frames[: min(4, len(self.cut3r_frames))])  # warm-up
        reset_peak(self.device)
        per_frame: list[float] = []
        synchronize(self.device)
        start = time.perf_counter()
        self.camera_tokens = self.stream_cut3r(self.cut3r_frames, per_frame)
        synchronize(self.device)
        total = time.perf_counter() - start
        steady = per_frame[1:] if len(per_frame) > 1 else per_frame
        ms = 1000 * median(steady)
        report.set("cut3r.frames", len(per_frame))
        report.set("cut3r.ms_per_frame", round(ms, 3))
        report.set("cut3r.fps", round(1000 / ms, 2))
        report.set("cut3r.first_frame_ms", round(1000 * per_frame[0], 3))
        report.set("cut3r.stream_s", round(total, 4))
        report.set("cut3r.peak_mem_gib", peak_gib(self.device))

    # -- queries
    def cold_query(self):
        prefix = self.model.encode_scene(self.pixel_values, self.camera_tokens)
        self.model.answer(prefix, self.question, self.situation)
        return prefix

    def cold_phase(self) -> None:
        report, repeats = self.report, self.spec.repeats
        reset_peak(self.device)
        times = timed(self.cold_query, self.device, repeats["cold"], self.deadline)
        report.set("cold.query_s", round(median(times), 4))
        report.set("cold.repeats", len(times))
        report.set("cold.peak_mem_gib", peak_gib(self.device))
        times = timed(
            lambda: self.model.encode_scene(self.pixel_values, self.camera_tokens),
            self.device,
            repeats["cold"],
            self.deadline,
            warmup=0,
        )
        report.set("cold.encode_scene_s", round(median(times), 4))

        def with_cut3r():
            tokens = self.stream_cut3r(self.cut3r_frames)
            prefix = self.model.encode_scene(self.pixel_values, tokens)
            self.model.answer(prefix, self.question, self.situation)

        times = timed(with_cut3r, self.device, repeats["cold_with_cut3r"], self.deadline, 0)
        report.set("cold.with_cut3r_s", round(median(times), 4))

    def warm_phases(self, which: str) -> None:
        report, repeats = self.report, self.spec.repeats
        if getattr(self, "prefix", None) is None:
            self.prefix = self.model.encode_scene(self.pixel_values, self.camera_tokens)
        prefix = self.prefix
        reset_peak(self.device)
        if which == "warm_ask":
            times = timed(
                lambda: self.model.answer(prefix, self.question, self.situation),
                self.device,
                repeats["warm_ask"],
                self.deadline,
            )
            report.set("warm_ask.seconds", round(median(times), 4))
            new = self.spec.loc3r.max_new_tokens
            report.set("warm_ask.new_tokens", new)
        else:
            times = timed(
                lambda: self.model.localize(prefix, self.situation),
                self.device,
                repeats["warm_localize"],
                self.deadline,
            )
            report.set("warm_localize.seconds", round(median(times), 5))
        report.set(f"{which}.repeats", len(times))
        report.set(f"{which}.peak_mem_gib", peak_gib(self.device))

    def compile_options(self) -> dict:
        """torch.compile options of the graph phases: --graphs-backend; inductor on CUDA records
        CUDA graphs (mode reduce-overhead)."""
        if self.args.graphs_backend != "inductor":
            return {"backend": self.args.graphs_backend}
        return {"mode": "reduce-overhead"} if self.device.type == "cuda" else {}

    def graphs_phase(self) -> None:
        """Warm ask from a static KV cache: eager, then the one-token step compiled."""
        report, device, model = self.report, self.device, self.model
        reference_prefix = model.encode_scene(self.pixel_values, self.camera_tokens)
        reference, _ = model.answer(reference_prefix, self.question, self.situation)
        del reference_prefix
        compile_options = {"fullgraph": True, **self.compile_options()}
        report.set("graphs.compile_options", dict(compile_options))
        for name, options in (("static", None), ("graphs", compile_options)):
            if self.deadline.passed():
                break
            graphs_before = compiled_graphs()
            model.use_static_decoding(StaticDecoding(extra_tokens=512, compile=options))
            try:
                reset_peak(device)
                prefix = model.encode_scene(self.pixel_values, self.camera_tokens)
                ask = functools.partial(model.answer, prefix, self.question, self.situation)
                first = timed(ask, device, 1, self.deadline, warmup=0)[0]
                report.set(f"{name}.first_ask_s", round(first, 4))
                times = timed(ask, device, self.spec.repeats["warm_ask"], self.deadline)
                report.set(f"{name}.warm_ask_s", round(median(times), 4))
                report.set(f"{name}.repeats", len(times))
                report.set(f"{name}.same_answer_as_dynamic", ask()[0] == reference)
                del ask, prefix
                new_scene = []  # more scenes than the pool keeps: every cache is reused
                for _ in range(5 if not self.deadline.passed() else 0):
                    prefix = model.encode_scene(self.pixel_values, self.camera_tokens)
                    ask = functools.partial(model.answer, prefix, self.question, self.situation)
                    new_scene += timed(ask, device, 1, self.deadline, warmup=0)
                    del ask, prefix
                if new_scene:
                    report.set(f"{name}.new_scene_ask_s", round(median(new_scene), 4))
                if name == "graphs" and not self.deadline.passed():
                    self.graphs_localize_and_cold()
                report.set(f"{name}.dynamo_graphs", compiled_graphs() - graphs_before)
                report.set(f"{name}.cudagraph_skips", cudagraph_skips())
                report.set(f"{name}.peak_mem_gib", peak_gib(device))
            finally:
                model.use_static_decoding(None)

    def graphs_localize_and_cold(self) -> None:
        """With the text passes compiled: the warm localize and the cold query (encode, ask)."""
        report, device, model, repeats = self.report, self.device, self.model, self.spec.repeats
        prefix = model.encode_scene(self.pixel_values, self.camera_tokens)
        locate = functools.partial(model.localize, prefix, self.situation)
        times = timed(locate, device, repeats["warm_localize"], self.deadline)
        report.set("graphs.warm_localize_s", round(median(times), 5))

        def cold() -> None:
            scene = model.encode_scene(self.pixel_values, self.camera_tokens)
            model.answer(scene, self.question, self.situation)

        if not self.deadline.passed():
            times = timed(cold, device, repeats["cold"], self.deadline, warmup=0)
            report.set("graphs.cold_query_s", round(median(times), 4))

    def cut3r_graphs_phase(self) -> None:
        """The CUT3R stream with the frame compiled: first stream, then a timed one."""
        report, device = self.report, self.device
        options = self.compile_options()  # compile_step adds fullgraph=True
        report.set("cut3r_graphs.compile_options", dict(options))
        graphs_before = compiled_graphs()
        self.cut3r.compile_step(options)
        try:
            synchronize(device)
            start = time.perf_counter()
            self.stream_cut3r(self.cut3r_frames)
            synchronize(device)
            report.set("cut3r_graphs.first_stream_s", round(time.perf_counter() - start, 3))
            reset_peak(device)
            per_frame: list[float] = []
            tokens = self.stream_cut3r(self.cut3r_frames, per_frame)
            steady = per_frame[1:] if len(per_frame) > 1 else per_frame
            ms = 1000 * median(steady)
            report.set("cut3r_graphs.ms_per_frame", round(ms, 3))
            report.set("cut3r_graphs.fps", round(1000 / ms, 2))
            difference = (tokens.float() - self.camera_tokens.float()).abs().max()
            scale = self.camera_tokens.float().abs().max().clamp_min(1e-12)
            report.set("cut3r_graphs.max_token_difference", float(difference))
            report.set("cut3r_graphs.relative_token_difference", float(difference / scale))
            report.set("cut3r_graphs.cudagraph_skips", cudagraph_skips())
            report.set("cut3r_graphs.dynamo_graphs", compiled_graphs() - graphs_before)
            report.set("cut3r_graphs.peak_mem_gib", peak_gib(device))
        finally:
            self.cut3r.compile_step(None)

    def profile_phase(self) -> None:
        """torch.profiler tables (top operators) of a CUT3R step, a warm ask and a cold query."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        sort = "cpu_time_total"
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
            sort = "cuda_time_total"
        out_dir = Path(self.args.profile_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = self.cut3r.init_state(1)
        self.cut3r.step(state, self.cut3r_frames[0])
        if getattr(self, "prefix", None) is None:  # the training phase dropped it
            with torch.inference_mode():
                self.prefix = self.model.encode_scene(self.pixel_values, self.camera_tokens)
        prefix = self.prefix
        runs = {
            "cut3r_step": lambda: self.cut3r.step(state, self.cut3r_frames[-1]),
            "warm_ask": lambda: self.model.answer(prefix, self.question, self.situation),
            "warm_localize": lambda: self.model.localize(prefix, self.situation),
            "cold_query": self.cold_query,
        }
        sections = []
        for name, fn in runs.items():
            if self.deadline.passed():
                break
            synchronize(self.device)
            with profile(activities=activities) as prof:
                fn()
                synchronize(self.device)
            table = prof.key_averages().table(sort_by=sort, row_limit=25)
            cpu_table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=15)
            sections.append(f"===== {name}: by {sort}\n{table}\n===== {name}: by cpu\n{cpu_table}")
            path = out_dir / "profile.txt"
            path.write_text("\n\n".join(sections) + "\n")
            self.report.set(f"profile.{name}", str(path))

    # -- training
    def train_phase(self) -> None:
        report, model, spec = self.report, self.model, self.spec
        self.prefix = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        frames = self.args.frames
        grid = spec.llava.pooled_grid
        generator = torch.Generator(device=self.device).manual_seed(self.args.seed + 3)
        sample = TrainSample(
            pixel_values=self.pixel_values,
            camera_tokens=self.camera_tokens.clone(),  # precomputed by the frozen CUT3R (the
            # clone is a normal tensor: the streamed ones are inference-mode tensors)
            situation=SITUATION,
            question=self.question,
            answer=ANSWER,
            position=torch.tensor([1.5, -0.75], device=self.device),
            yaw=math.radians(170.0),
            bev_targets=torch.randn(frames, grid, grid, 2, device=self.device, generator=generator),
            bev_mask=torch.rand(frames, grid, grid, device=self.device, generator=generator) > 0.3,
        )
        model.train()
        llm = model.base.language_model
        # newer transformers 5 name it activation_checkpointing_* (gradient_* deprecated)
        if hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        report.set("train.trainable_params", sum(p.numel() for p in trainable))
        report.set("train.activation_checkpointing", True)
        report.set("train.batch", 1)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(
            trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, **fused
        )
        report.set(
            "train.optimizer",
            f"AdamW(lr 1e-5, betas (0.9, 0.95){', fused' if fused else ''}); weights, gradients "
            f"and states in {str(spec.dtype).replace('torch.', '')}",
        )
        losses = []

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            parts = model.forward_train([sample])
            parts["loss"].backward()
            optimizer.step()
            losses.append(float(parts["loss"].detach()))

        step()  # warm-up: also allocates the AdamW states
        reset_peak(self.device)
        times = timed(step, self.device, spec.repeats["train"], self.deadline, warmup=0)
        seconds = median(times)
        report.set("train.step_s", round(seconds, 4))
        report.set("train.repeats", len(times))
        report.set("train.peak_mem_gib", peak_gib(self.device))
        report.set("train.tokens_per_step", self.train_tokens)
        report.set("train.tokens_per_s", round(self.train_tokens / seconds, 1))
        report.set("train.loss_finite", all(math.isfinite(v) for v in losses))
        per_sample = seconds / 1  # batch 1 per GPU
        report.set(
            "projection",
            {
                "steps": RECIPE_STEPS,
                "global_batch": RECIPE_GLOBAL_BATCH,
                "seconds_per_sample": round(per_sample, 4),
                "gpu_hours": round(RECIPE_STEPS * RECIPE_GLOBAL_BATCH * per_sample / 3600, 2),
                "formula": "gpu_hours = steps * global_batch * seconds_per_sample / 3600 "
                "(seconds_per_sample = train.step_s at batch 1; data loading, CUT3R/SigLIP "
                "feature caching and multi-GPU communication not included)",
            },
        )
        disable = getattr(llm, "activation_checkpointing_disable", None)
        (disable or llm.gradient_checkpointing_disable)()
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()  # give the AdamW states back before the profile phase
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ summary
def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cudagraph_skips() -> int:
    """Times inductor declined to record a CUDA graph in this process (0 wanted on CUDA)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def best_cut3r_fps(data: dict) -> float | None:
    """The faster CUT3R stream: eager, or compiled when its tokens agree with eager's."""
    values = [figure(data, "cut3r.fps")]
    difference = figure(data, "cut3r_graphs.relative_token_difference")
    if difference is not None and difference <= GRAPH_TOKEN_TOLERANCE:
        values.append(figure(data, "cut3r_graphs.fps"))
    values = [v for v in values if v is not None]
    return max(values) if values else None


def fastest(data: dict, *keys: str) -> float | None:
    """The shortest of some figures (seconds): e.g. dynamic cache, or static with graphs."""
    values = [figure(data, k) for k in keys]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def summarise(report: Report, args) -> None:
    """Targets and the 24 GB question, from the measured figures (released size on CUDA)."""
    data = report.data
    released_cuda = args.size == "released" and args.device == "cuda"
    measured = {
        "cold_query_s": fastest(data, "cold.query_s", "graphs.cold_query_s"),
        "warm_ask_s": fastest(data, "warm_ask.seconds", "graphs.warm_ask_s"),
        "warm_localize_s": fastest(data, "warm_localize.seconds", "graphs.warm_localize_s"),
        "cut3r_fps": best_cut3r_fps(data),
    }
    targets: dict = {"applies": released_cuda}
    for name, (op, limit) in TARGETS.items():
        value = measured[name]
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        targets[name] = {"target": f"{op} {limit}", "measured": value, "met": met}
    report.set("targets", targets)
    report.set("paper", PAPER)
    if released_cuda:
        phases = ("cut3r", "cut3r_graphs", "cold", "warm_ask", "static", "graphs")
        peaks = [figure(data, f"{p}.peak_mem_gib") for p in phases]
        peaks = [p for p in peaks if p is not None]
        train_peak = figure(data, "train.peak_mem_gib")
        report.set(
            "rtx4090_24gb",
            {
                "assumed_usable_gib": RTX4090_USABLE_GIB,
                "inference_peak_gib": max(peaks) if peaks else None,
                "inference_fits": (max(peaks) <= RTX4090_USABLE_GIB) if peaks else None,
                "train_peak_gib": train_peak,
                "train_fits": None if train_peak is None else train_peak <= RTX4090_USABLE_GIB,
                "note": "bf16 weights of all models on one card, peaks from this run; the paper "
                "ran fp16 (same bytes)",
            },
        )


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--size", choices=("released", "tiny"), default="tiny")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: bfloat16 for released, float32 for tiny")  # fmt: skip
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--question-tokens", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (written as it goes)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="soft limit: no phase or repeat starts after it")  # fmt: skip
    parser.add_argument("--stop-after", choices=PHASES, default=None)
    parser.add_argument("--phases", type=lambda text: text.split(","), default=None,
                        help="comma-separated phases to run (build and cut3r always run: the "
                        "later phases need its camera tokens)")  # fmt: skip
    parser.add_argument("--shapes-only", action="store_true",
                        help="meta device only: write shapes and parameter counts")  # fmt: skip
    parser.add_argument("--profile-dir", type=Path, default=None)
    parser.add_argument("--graphs-backend", default="inductor",
                        help="torch.compile backend of the graphs phase (inductor; on CUDA with "
                        "mode reduce-overhead)")  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device!r}")
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    unknown = sorted(set(args.phases or ()) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")
    if args.shapes_only:
        args.device = "meta"
    elif args.size == "released" and args.device != "cuda":
        parser.error(
            "--size released builds the 7B model and runs on --device cuda only; it is never "
            "built on the CPU (--shapes-only counts its parameters on the meta device)"
        )
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out)
    command = "python bench/bench_real_size.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report.set("command", command.strip())
    report.set("size", args.size)
    report.set("device", args.device)
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")  # CUT3R's float32 heads may use TF32
    report.set("env", environment(torch.device(args.device)))
    torch.manual_seed(args.seed)

    def on_term(signum, frame) -> None:  # `timeout` sends SIGTERM: keep the figures, say so
        report.set("status", f"killed by signal {signum}")
        raise SystemExit(124)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return run_phases(args, report)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_phases(args, report: Report) -> int:
    """Run the phases in order, recording each; returns the exit status."""
    bench = Bench(args, report)
    phases = {
        "build": bench.build,
        "cut3r": bench.cut3r_phase,
        "cold": bench.cold_phase,
        "warm_ask": lambda: bench.warm_phases("warm_ask"),
        "warm_localize": lambda: bench.warm_phases("warm_localize"),
        "graphs": bench.graphs_phase,
        "cut3r_graphs": bench.cut3r_graphs_phase,
        "profile": bench.profile_phase,
        "train": bench.train_phase,
    }
    skip = set(PHASES) - {"build", "cut3r", *args.phases} if args.phases else set()
    if args.skip_train:
        skip.add("train")
    if args.profile_dir is None:
        skip.add("profile")
    status = "complete"
    for name in PHASES:
        if args.shapes_only and name != "build":
            status = "shapes_only"
            break
        if name in skip:
            continue
        if bench.deadline.passed():
            status = f"timeout before {name}"
            break
        if name != "build" and "build" not in report.data["completed_phases"]:
            status = "build failed"
            break
        try:
            inference = ("cut3r", "cold", "warm_ask", "warm_localize", "graphs", "cut3r_graphs")
            with torch.inference_mode(name in inference):
                phases[name]()
        except Exception as exc:  # keep going: one failed phase should not lose the others
            report.data["errors"][name] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            report.flush()
            print(f"[bench] phase {name} failed: {report.data['errors'][name]}", file=sys.stderr)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            if name == "cut3r" and not hasattr(bench, "camera_tokens"):
                status = "cut3r failed"
                break
            continue
        report.data["completed_phases"].append(name)
        report.flush()
        print(f"[bench] {name} done", file=sys.stderr)
        if args.stop_after == name:
            status = f"stopped after {name}"
            break
    summarise(report, args)
    report.set("status", status)
    print(json.dumps(report.data, indent=2, default=str))
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
