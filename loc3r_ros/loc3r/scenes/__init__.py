"""Procedural indoor scenes with exact ground truth: rooms, renders, situations, questions."""

from loc3r.scenes.episode import (
    Episode,
    EpisodeConfig,
    bev_targets,
    camera_walk,
    make_episode,
    object_cover,
)
from loc3r.scenes.render import Frame, camera_pose, intrinsics, render
from loc3r.scenes.situations import QARecord, answer_vocabulary, relative_direction
from loc3r.scenes.world import CATALOGUE, COLOURS, Room, SceneObject, generate_room

__all__ = [
    "CATALOGUE",
    "COLOURS",
    "Episode",
    "EpisodeConfig",
    "Frame",
    "QARecord",
    "Room",
    "SceneObject",
    "answer_vocabulary",
    "bev_targets",
    "object_cover",
    "camera_pose",
    "camera_walk",
    "generate_room",
    "intrinsics",
    "make_episode",
    "relative_direction",
    "render",
]
