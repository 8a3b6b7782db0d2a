"""Scene engine: frame intake, perception, scene memory and situated queries."""

from loc3r.engine.frame_buffer import (
    Keyframe,
    KeyframeBuffer,
    KeyframeConfig,
    sample_uniform,
    validate_image,
)
from loc3r.engine.scene_engine import (
    DEFAULT_SITUATION,
    AgentPose,
    EngineConfig,
    QueryResult,
    SceneEngine,
    SituatedModel,
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
    "SituatedModel",
    "sample_uniform",
    "validate_image",
]
