"""Loc3R-VLM: LLaVA-Video with a CUT3R camera-token prior, layout and situation heads."""

from loc3r.vlm.checkpoint import load_llava_video, map_checkpoint_key
from loc3r.vlm.llava_video import (
    IMAGE_TOKEN_INDEX,
    LlavaCheckpointError,
    LlavaVideoConfig,
    LlavaVideoModel,
)
from loc3r.vlm.loc3r_vlm import (
    DEFAULT_SITUATION,
    ORI_TOKEN,
    POS_TOKEN,
    Loc3rVLM,
    Loc3rVLMConfig,
    PosePrediction,
    ScenePrefix,
    TrainSample,
)
from loc3r.vlm.losses import LossWeights
from loc3r.vlm.processor import (
    chat_prompt,
    frames_to_pixel_values,
    time_instruction,
    tokenize_with_video,
)
from loc3r.vlm.training_aids import SituationTrace, trace_situation

__all__ = [
    "DEFAULT_SITUATION",
    "ORI_TOKEN",
    "POS_TOKEN",
    "Loc3rVLM",
    "Loc3rVLMConfig",
    "LossWeights",
    "PosePrediction",
    "ScenePrefix",
    "SituationTrace",
    "TrainSample",
    "IMAGE_TOKEN_INDEX",
    "LlavaCheckpointError",
    "LlavaVideoConfig",
    "LlavaVideoModel",
    "chat_prompt",
    "frames_to_pixel_values",
    "load_llava_video",
    "map_checkpoint_key",
    "time_instruction",
    "tokenize_with_video",
    "trace_situation",
]
