"""Scene engine: frame intake, perception, scene memory and situated queries."""

from loc3r.engine.frame_buffer import Keyframe, KeyframeBuffer, KeyframeConfig, validate_image
from loc3r.engine.scene_engine import (
    DEFAULT_SITUATION,
    AgentPose,
    EngineConfig,
    QueryResult,
    SceneEngine,
    ScenePipeline,
)

__all__ = [
    "DEFAULT_SITUATION",
    "AgentPose",
    "EngineConfig",
    "Keyframe",
    "KeyframeBuffer",
    "KeyframeConfig",
    "QueryResult",
    "SceneEngine",
    "ScenePipeline",
    "validate_image",
]
