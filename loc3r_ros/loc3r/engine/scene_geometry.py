"""The reconstruction of the current scene and its BEV frame, kept incrementally.

`SceneGeometry` holds each processed keyframe's CUT3R output (points, colours, camera pose) and
builds what RViz shows: the BEV frame (given gravity > floor fit > level camera) and a voxel-
downsampled cloud in it. The engine hands it only the keyframes it has not seen yet, so it can
live in another process (the model process serves one): the floor fit and the downsampling are
tens of milliseconds of NumPy that would otherwise share the GIL with the camera callback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loc3r.engine.gravity import estimate_up
from loc3r.engine.scene_frame import SceneFrame, SceneView, bev_frame, voxel_downsample

VIEW_POINTS = 32_768  # input points of a scene view (the reconstruction shown in RViz)


@dataclass
class KeyframeGeometry:
    """What the view needs of one processed keyframe."""

    index: int  # the keyframe's running number since the last reset
    stamp_ns: int
    pose_c2w: np.ndarray  # (4, 4) CUT3R camera-to-world
    points: np.ndarray  # (K, 3) CUT3R world points
    colors: np.ndarray  # (K, 3) uint8


class SceneGeometry:
    """Keyframe geometry of one scene, its BEV frame (cached) and views of it."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._frames: dict[int, KeyframeGeometry] = {}
        self._given_up: np.ndarray | None = None
        self._frame_cache: tuple[tuple, SceneFrame] | None = None

    def update(
        self,
        generation: int,
        added: list[KeyframeGeometry],
        alive: list[int],
        given_up: np.ndarray | None = None,
    ) -> None:
        """Add new keyframes and keep only `alive` ones (a new generation starts over)."""
        if generation != self._generation:
            self._generation, self._frames, self._frame_cache = generation, {}, None
        for keyframe in added:
            self._frames[keyframe.index] = keyframe
        missing = [i for i in alive if i not in self._frames]
        if missing:
            raise ValueError(f"keyframes {missing[:5]} were never added to the scene geometry")
        keep = set(alive)
        self._frames = {i: k for i, k in self._frames.items() if i in keep}
        up = None if given_up is None else np.asarray(given_up, dtype=np.float64)
        changed = (up is None) != (self._given_up is None) or (
            up is not None and not np.array_equal(up, self._given_up)
        )
        if changed:
            self._given_up, self._frame_cache = up, None

    @property
    def indices(self) -> list[int]:
        """Keyframe indices held, oldest first."""
        return sorted(self._frames)

    def frame(self) -> SceneFrame | None:
        """The BEV frame; refitted only when the scene grew by a quarter (or 16 keyframes).

        A stable frame for users, and a floor fit a few times at most in a long stream; given
        gravity or a new first keyframe always refits.
        """
        frames = [self._frames[i] for i in self.indices]
        if not frames:
            return None
        key = (self._generation, frames[0].index, len(frames), frames[-1].index)
        if self._frame_cache is not None:
            cached_key, cached = self._frame_cache
            same_scene = cached_key[:2] == key[:2] and cached.source != "given"
            grown = len(frames) >= max(cached_key[2] * 1.25, cached_key[2] + 1) or (
                len(frames) >= cached_key[2] + 16
            )
            if cached_key == key or (same_scene and self._given_up is None and not grown):
                return cached
        points = np.concatenate([k.points for k in frames])
        poses = [k.pose_c2w for k in frames]
        estimate = estimate_up(points, poses, self._given_up)
        frame = bev_frame(poses[0], estimate.up, estimate.source, estimate.detail)
        self._frame_cache = (key, frame)
        return frame

    def view(self, voxel: float = 0.05, max_points: int = 50_000) -> SceneView | None:
        """Camera trajectory and reconstruction in the BEV frame (None with no keyframe)."""
        frame = self.frame()
        if frame is None:
            return None
        frames = [self._frames[i] for i in self.indices]
        # about VIEW_POINTS input points, an even stride through each keyframe's points
        total = sum(len(k.points) for k in frames)
        stride = max(1, -(-total // VIEW_POINTS))
        points = np.concatenate([k.points[::stride] for k in frames]).astype(np.float64)
        colors = np.concatenate([k.colors[::stride] for k in frames])
        points, colors = voxel_downsample(frame.points(points), colors, voxel, max_points)
        return SceneView(
            frame=frame,
            camera_poses=[frame.camera_pose(k.pose_c2w) for k in frames],
            stamps_ns=[k.stamp_ns for k in frames],
            points=points.astype(np.float32),
            colors=colors,
        )

    def update_and_view(
        self,
        generation: int,
        added: list[KeyframeGeometry],
        alive: list[int],
        given_up: np.ndarray | None,
        voxel: float,
        max_points: int,
    ) -> SceneView | None:
        """`update` then `view` (one round trip when this object lives in another process)."""
        self.update(generation, added, alive, given_up)
        return self.view(voxel, max_points)
