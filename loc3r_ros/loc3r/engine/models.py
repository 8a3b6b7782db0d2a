"""Model bundles for the engine: a Loc3R-VLM checkpoint and a CUT3R checkpoint in one directory.

Layout of a model directory (what `save_bundle` writes and `load_bundle` reads):
    bundle.json     {"format": "loc3r_bundle", "cut3r_image_size": 224, "num_query_frames": 32,
                     "pose_source": "cut3r", "camera_tokens": "cut3r"}  ("geometric" poses and
                     tokens that state them, "pose", or poses and points for a VLM with a
                     point embedding, "geometry": see loc3r.engine.perception); optionally
                     "answer_vocabulary": ["left", "right", ...], the closed set a model's
                     answers come from (the embedded one's: loc3r.scenes.answer_vocabulary);
                     answers are then always one of its entries (Loc3rVLM.set_answer_vocabulary)
    vlm/            Loc3rVLM.save_pretrained (config.json, model.safetensors, tokenizer files)
    cut3r/          our CUT3R format (config.json, model.safetensors), or cut3r.pth (official)
    depth/          optional, with "depth_source": "mono_depth" and geometric poses: a monocular
                    depth network whose depth the pose source takes instead of CUT3R's
                    (loc3r.engine.mono_depth; the embedded default's)
    domain.safetensors  optional: the domain check of the model's input (loc3r.engine.domain)
The embedded default lives in loc3r/assets/default_model (see README); users point the node's
`model_dir` at their own bundle, e.g. a Loc3R-VLM fine-tuned from LLaVA-Video-7B with the official
CUT3R checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loc3r.cut3r import load_cut3r
from loc3r.engine.domain import DomainModel, DomainVerdict, frame_features
from loc3r.engine.mono_depth import MonoDepth, load_mono_depth, save_mono_depth
from loc3r.engine.perception import Perception, PerceptionConfig
from loc3r.engine.scene_engine import AgentPose
from loc3r.errors import Loc3rError
from loc3r.vlm import Loc3rVLM, ScenePrefix, frames_to_pixel_values
from loc3r.vlm.loc3r_vlm import check_answer_vocabulary
from loc3r.vlm.static_decoding import StaticDecoding

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"
# How answers are decoded (loc3r.vlm.static_decoding): "dynamic" a growing KV cache; "static" a
# fixed-size one; "graphs" that, with the one-token step and the text passes compiled at load
# (CUDA graphs on CUDA)
DECODING_MODES = ("dynamic", "static", "graphs")
DEPTH_SOURCES = ("cut3r", "mono_depth")  # bundle.json "depth_source" (see the layout above)


class ModelLoadError(Loc3rError):
    """A model directory is missing, incomplete or does not load (message says what)."""


@dataclass
class EncodedScene:
    """The VLM's scene prefix and the domain check of its frames."""

    prefix: ScenePrefix
    domain: DomainVerdict | None


class Loc3rSceneModel:
    """Loc3R-VLM as the engine's SituatedModel: frames + camera tokens -> prefix -> pose/answer."""

    def __init__(self, vlm: Loc3rVLM, domain: DomainModel | None = None) -> None:
        self.vlm = vlm.eval()
        self.image_size = vlm.base.config.vision["image_size"]
        self.domain_model = domain

    def encode_scene(
        self, images: list[np.ndarray], camera_tokens: torch.Tensor | None
    ) -> EncodedScene:
        """Encode the video part of the prompt once (cached by the engine); check its domain."""
        pixels = frames_to_pixel_values(images, size=self.image_size)
        verdict = None
        if self.domain_model is not None:
            verdict = self.domain_model.verdict(frame_features(self.vlm, pixels))
        return EncodedScene(self.vlm.encode_scene(pixels, camera_tokens), verdict)

    @staticmethod
    def domain(scene: EncodedScene) -> DomainVerdict | None:
        """The domain check made when the scene was encoded."""
        return scene.domain

    @staticmethod
    def _pose(prediction) -> AgentPose:
        x, y = (float(v) for v in prediction.xy)
        sx, sy = (float(v) for v in prediction.sigma)
        return AgentPose(x, y, prediction.yaw, sx, sy, prediction.yaw_spread)

    def localize(self, scene: EncodedScene, situation: str) -> AgentPose:
        """Situated pose in the first frame's BEV frame."""
        return self._pose(self.vlm.localize(scene.prefix, situation))

    def answer(
        self, scene: EncodedScene, question: str, situation: str
    ) -> tuple[str, AgentPose, float]:
        """Answer, situated pose, and the model's probability of the answer."""
        text, prediction, probability = self.vlm.answer_with_probability(
            scene.prefix, question, situation
        )
        return text, self._pose(prediction), probability


@dataclass
class Bundle:
    """What load_bundle returns."""

    model: Loc3rSceneModel
    perception: Perception
    num_query_frames: int
    description: str
    geometry: object | None = None  # where scene views are built; None = in the engine


def resolve_device(device: str) -> torch.device:
    """'cpu' | 'cuda' | 'auto' -> a torch device; 'cuda' without CUDA is an error (no fallback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


TRAINING_SCENE_KEYS = ("look", "walk", "render_size")
OPTIONAL_SCENE_KEYS = ("stream_video",)  # bool: CUT3R and the pose source saw every video step


def check_training_scenes(scenes) -> dict:
    """{"look", "walk", "render_size"[, "stream_video"]} of a bundle's training_scenes, checked.

    Raises ValueError. Other keys are left out (a later version may add some); only `loc3r eval`
    and `loc3r scene` read the field, so a bundle whose field is wrong still loads.
    """
    from loc3r.scenes.episode import LOOKS, WALKS

    if not isinstance(scenes, dict) or not set(TRAINING_SCENE_KEYS) <= set(scenes):
        raise ValueError(f"expected {{look, walk, render_size}}, got {scenes!r}")
    if scenes["look"] not in LOOKS or scenes["walk"] not in WALKS:
        raise ValueError(f"look must be one of {LOOKS} and walk one of {WALKS}, got {scenes!r}")
    size = scenes["render_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 4096:
        raise ValueError(f"render_size must be an integer from 16 to 4096, got {size!r}")
    if not isinstance(scenes.get("stream_video", False), bool):
        raise ValueError(f"stream_video must be true or false, got {scenes['stream_video']!r}")
    keys = TRAINING_SCENE_KEYS + tuple(k for k in OPTIONAL_SCENE_KEYS if k in scenes)
    return {key: scenes[key] for key in keys}


def training_scenes(root: Path, spec: dict | None = None) -> dict:
    """The checked training_scenes of a model directory's bundle.json ({} when it has none).

    `spec`: that bundle.json when the caller has read it already (read_bundle_spec).
    """
    spec = read_bundle_spec(root) if spec is None else spec
    if "training_scenes" not in spec:
        return {}
    try:
        return check_training_scenes(spec["training_scenes"])
    except ValueError as exc:
        raise ModelLoadError(f"{root / 'bundle.json'}: training_scenes: {exc}") from exc


def read_bundle_spec(root: Path) -> dict:
    """The bundle.json of a model directory (cheap checks before loading anything)."""
    spec_path = root / "bundle.json"
    if not spec_path.is_file():
        raise ModelLoadError(f"{root} is not a loc3r model directory (no bundle.json)")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{spec_path}: invalid JSON ({exc})") from exc
    if not isinstance(spec, dict) or spec.get("format") != "loc3r_bundle":
        raise ModelLoadError(f"{spec_path}: format is not loc3r_bundle")
    if "answer_vocabulary" in spec:
        try:
            spec["answer_vocabulary"] = list(check_answer_vocabulary(spec["answer_vocabulary"]))
        except ValueError as exc:
            raise ModelLoadError(f"{spec_path}: answer_vocabulary: {exc}") from exc
    return spec


def decoding_settings(mode: str, device: torch.device) -> StaticDecoding | None:
    """The static-decoding settings of a DECODING_MODES entry (None: the dynamic cache)."""
    if mode not in DECODING_MODES:
        raise ValueError(f"decoding must be one of {', '.join(DECODING_MODES)}, got {mode!r}")
    if mode == "dynamic":
        return None
    if mode == "static":
        return StaticDecoding()
    options = {"fullgraph": True}
    if device.type == "cuda":
        options["mode"] = "reduce-overhead"  # CUDA graphs
    return StaticDecoding(compile=options)


def compile_decoding(vlm: Loc3rVLM, frames: int) -> None:
    """Compile (and on CUDA record) the one-token step and the text pass now, not at a question.

    Texts longer than `StaticDecoding.text_bucket` tokens compile another shape when first met.
    A blank scene of `frames` frames (the bundle's query length) fixes the cache capacity every
    scene of up to that many frames gets (`min_capacity`), so they all reuse these graphs. Its
    answers run a fixed number of tokens (no end token, no loop guard): the first calls of a
    reduce-overhead step warm up, the next record the CUDA graph.
    """
    settings = vlm.static_decoding
    size = vlm.base.config.vision["image_size"]
    pixels = torch.zeros(frames, 3, size, size, device=vlm.device)
    camera = torch.zeros(frames, vlm.config.cam_token_dim, device=vlm.device)
    prefix = vlm.encode_scene(pixels, camera if vlm.config.use_camera_tokens else None)
    settings.min_capacity = settings.capacity_for(prefix.length)
    saved = vlm.stop_ids, vlm.config.stop_repeats, vlm.config.max_new_tokens
    vlm.stop_ids, vlm.config.stop_repeats, vlm.config.max_new_tokens = (), 0, 4
    try:
        for _ in range(3):
            vlm.answer(prefix, "where is it", "I stand here")
    finally:
        vlm.stop_ids, vlm.config.stop_repeats, vlm.config.max_new_tokens = saved


def camera_token_mismatch(vlm: Loc3rVLM, perception: Perception) -> str | None:
    """Why `vlm` cannot read `perception`'s camera tokens, or None when it can."""
    tokens = perception.config.camera_tokens
    if vlm.config.point_embedding != (tokens == "geometry"):
        has = "has" if vlm.config.point_embedding else "has no"
        return (
            f"camera_tokens={tokens!r}, but the VLM {has} point embedding (geometry tokens and "
            "the point embedding go together)"
        )
    if vlm.config.cam_token_dim != perception.token_width:
        return (
            f"the VLM expects {vlm.config.cam_token_dim}-d camera tokens, CUT3R's {tokens!r} "
            f"tokens are {perception.token_width}-d"
        )
    return None


def load_bundle(
    model_dir: str | Path | None = None, device: str = "cpu", decoding: str = "dynamic"
) -> Bundle:
    """Load a model directory (default: the embedded model). Raises ModelLoadError.

    `decoding`: one of DECODING_MODES; "static" and "graphs" need a model that writes free
    answers (a bundle with an answer vocabulary scores its entries instead).
    """
    root = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    spec = read_bundle_spec(root)
    torch_device = resolve_device(device)
    dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    cut3r_path = root / "cut3r" if (root / "cut3r").is_dir() else root / "cut3r.pth"
    depth_source = spec.get("depth_source", "cut3r")
    if depth_source not in DEPTH_SOURCES:
        raise ModelLoadError(
            f"{root}/bundle.json: depth_source={depth_source!r}, expected one of {DEPTH_SOURCES}"
        )
    try:
        cut3r = load_cut3r(cut3r_path, device=torch_device, dtype=dtype)
        vlm = Loc3rVLM.from_pretrained(root / "vlm", device=torch_device)
        depth = None
        if depth_source == "mono_depth":
            depth = load_mono_depth(root / "depth", device=torch_device)
    except (OSError, ValueError, Loc3rError) as exc:
        raise ModelLoadError(f"cannot load {root}: {exc}") from exc
    except Exception as exc:  # any other loader failure is still a load failure
        raise ModelLoadError(f"cannot load {root}: {type(exc).__name__}: {exc}") from exc
    try:
        perception_config = PerceptionConfig(
            image_size=int(spec.get("cut3r_image_size", 512)),
            pose_source=str(spec.get("pose_source", "cut3r")),
            camera_tokens=str(spec.get("camera_tokens", "cut3r")),
            token_grid=vlm.base.config.pooled_grid,
        )
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{root}/bundle.json: {exc}") from exc
    try:
        perception = Perception(cut3r, perception_config, depth)
    except ValueError as exc:
        raise ModelLoadError(f"{root}/bundle.json: {exc}") from exc
    if (mismatch := camera_token_mismatch(vlm, perception)) is not None:
        raise ModelLoadError(f"{root}: {mismatch} (bundle.json)")
    vlm.set_answer_vocabulary(spec.get("answer_vocabulary"))  # None: free decoding
    frames = int(spec.get("num_query_frames", 32))
    try:
        settings = decoding_settings(decoding, torch_device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    if settings is not None:
        if vlm.answer_vocabulary is not None:
            raise ModelLoadError(
                f"decoding {decoding!r} is for models that write free answers; {root} answers "
                f"from a vocabulary of {len(vlm.answer_vocabulary)} entries (use 'dynamic')"
            )
        vlm.use_static_decoding(settings)
        if settings.compile is not None:
            try:
                compile_decoding(vlm, frames)
            except Exception as exc:  # a compiler or driver failure is a load failure
                raise ModelLoadError(
                    f"decoding {decoding!r}: compiling the decoding step failed "
                    f"({type(exc).__name__}: {str(exc)[:500]}); use 'static' or 'dynamic'"
                ) from exc
    try:
        domain = DomainModel.load(root)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    return Bundle(
        model=Loc3rSceneModel(vlm, domain),
        perception=perception,
        num_query_frames=frames,
        description=spec.get("description", str(root)),
    )


def save_bundle(
    directory: str | Path,
    vlm: Loc3rVLM,
    cut3r,
    *,
    cut3r_image_size: int,
    num_query_frames: int,
    description: str = "",
    pose_source: str = "cut3r",
    camera_tokens: str = "cut3r",
    answer_vocabulary: list[str] | None = None,
    training_scenes: dict | None = None,
    vlm_state: dict | None = None,
    depth: MonoDepth | None = None,
) -> Path:
    """Write a model directory that load_bundle reads (answer_vocabulary: see the layout).

    training_scenes: the synthetic rooms it was trained on ({"look", "walk", "render_size"}),
    so `loc3r scene --as-trained` (and `make demo`) show it rooms like them. vlm_state: the
    VLM's weights when they are not its own state_dict (LoRA adapters merged). depth: a
    monocular depth network for the geometric pose source (saved in depth/).
    """
    if depth is not None and pose_source != "geometric":
        raise ValueError("a depth network serves the geometric pose source only")
    from loc3r.cut3r import save_pretrained

    vocabulary = answer_vocabulary  # checked before anything is written
    if vocabulary is not None:
        vocabulary = list(check_answer_vocabulary(vocabulary))
    if training_scenes is not None:
        training_scenes = check_training_scenes(training_scenes)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vlm.save_pretrained(directory / "vlm", vlm_state)
    save_pretrained(cut3r, directory / "cut3r")
    if depth is not None:
        save_mono_depth(depth, directory / "depth")
    spec = {
        "format": "loc3r_bundle",
        "cut3r_image_size": cut3r_image_size,
        "num_query_frames": num_query_frames,
        "pose_source": pose_source,
        "camera_tokens": camera_tokens,
        "depth_source": "cut3r" if depth is None else "mono_depth",
        "description": description,
    }
    if vocabulary is not None:
        spec["answer_vocabulary"] = vocabulary
    if training_scenes is not None:
        spec["training_scenes"] = training_scenes
    (directory / "bundle.json").write_text(json.dumps(spec, indent=2))
    return directory
