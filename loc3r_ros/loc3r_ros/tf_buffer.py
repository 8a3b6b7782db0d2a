"""A small TF buffer (tf2_ros is not available everywhere loc3r_ros runs).

Feed it the TFMessages of /tf and /tf_static; ask for the transform between two frames at a time.
Dynamic transforms are interpolated (linear translation, slerp rotation) between the two nearest
samples and never extrapolated beyond `max_extrapolation_s`; static transforms hold at all times.
Transforms are 4x4 float64 matrices T_parent_child (maps child coordinates into the parent).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


class TfLookupError(LookupError):
    """No transform between the frames at that time (message says which link is missing)."""


@dataclass
class _Link:
    parent: str
    static: bool
    stamps: deque = field(default_factory=deque)  # nanoseconds, ascending
    matrices: deque = field(default_factory=deque)


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    t, q = transform.translation, transform.rotation
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    matrix[:3, 3] = (t.x, t.y, t.z)
    return matrix


class TfBuffer:
    """Thread-safe store of a TF tree with time lookup."""

    def __init__(self, cache_s: float = 10.0, max_extrapolation_s: float = 0.1) -> None:
        self.cache_ns = int(cache_s * 1e9)
        self.max_extrapolation_ns = int(max_extrapolation_s * 1e9)
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()

    def add(self, parent: str, child: str, stamp_ns: int, matrix: np.ndarray, static: bool) -> None:
        """Record T_parent_child at `stamp_ns`."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        with self._lock:
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static:
                link = self._links[child] = _Link(parent, static)
            if static:
                link.stamps, link.matrices = deque([0]), deque([matrix])
                return
            if link.stamps and stamp_ns <= link.stamps[-1]:
                if stamp_ns == link.stamps[-1]:
                    return  # repeated data
                if stamp_ns < link.stamps[-1] - self.cache_ns:
                    return  # too old to matter
                i = bisect.bisect_left(list(link.stamps), stamp_ns)
                link.stamps.insert(i, stamp_ns)
                link.matrices.insert(i, matrix)
            else:
                link.stamps.append(stamp_ns)
                link.matrices.append(matrix)
            while link.stamps and link.stamps[0] < link.stamps[-1] - self.cache_ns:
                link.stamps.popleft()
                link.matrices.popleft()

    def add_message(self, msg, static: bool) -> None:
        """Record every transform of a tf2_msgs/TFMessage."""
        for tf in msg.transforms:
            stamp = int(tf.header.stamp.sec) * 1_000_000_000 + int(tf.header.stamp.nanosec)
            self.add(
                tf.header.frame_id,
                tf.child_frame_id,
                stamp,
                transform_to_matrix(tf.transform),
                static,
            )

    def frames(self) -> set[str]:
        """Every frame seen as parent or child."""
        with self._lock:
            return set(self._links) | {link.parent for link in self._links.values()}

    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._links and len(chain) < 1000:
            chain.append(self._links[chain[-1]].parent)
        return chain

    def _at(self, child: str, stamp_ns: int) -> np.ndarray:
        link = self._links[child]
        if link.static:
            return link.matrices[0]
        stamps = link.stamps
        if stamp_ns <= 0:  # "latest"
            return link.matrices[-1]
        i = bisect.bisect_left(list(stamps), stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return link.matrices[i]
        if i == 0 or i == len(stamps):
            nearest = 0 if i == 0 else len(stamps) - 1
            if abs(stamps[nearest] - stamp_ns) > self.max_extrapolation_ns:
                raise TfLookupError(
                    f"{link.parent} -> {child}: no data near t={stamp_ns * 1e-9:.3f}s "
                    f"(have {stamps[0] * 1e-9:.3f}..{stamps[-1] * 1e-9:.3f}s)"
                )
            return link.matrices[nearest]
        t0, t1 = stamps[i - 1], stamps[i]
        a, b = link.matrices[i - 1], link.matrices[i]
        w = (stamp_ns - t0) / (t1 - t0)
        out = np.eye(4)
        out[:3, 3] = (1 - w) * a[:3, 3] + w * b[:3, 3]
        rotations = Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]]))
        out[:3, :3] = Slerp([0.0, 1.0], rotations)([w]).as_matrix()[0]
        return out

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """T_target_source at `stamp_ns` (0 = latest): maps source coordinates into target."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            if target == source:
                return np.eye(4)
            up_source, up_target = self._chain_to_root(source), self._chain_to_root(target)
            common = next((f for f in up_source if f in set(up_target)), None)
            if common is None:
                raise TfLookupError(f"{target} and {source} are not connected in the TF tree")
            t_common_source = np.eye(4)
            for child in up_source[: up_source.index(common)]:
                t_common_source = self._at(child, stamp_ns) @ t_common_source
            t_common_target = np.eye(4)
            for child in up_target[: up_target.index(common)]:
                t_common_target = self._at(child, stamp_ns) @ t_common_target
        return np.linalg.inv(t_common_target) @ t_common_source
