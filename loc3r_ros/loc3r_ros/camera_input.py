"""Is the camera getting through? Frames received against publishers and transport losses.

The node feeds this with what it sees on the image topic: frames received, QoS message-lost
events (Fast DDS reports them for best-effort samples it could not deliver), incompatible-QoS
events, and the topic's publisher count. `diagnosis()` names the problem, if any, and what to
change; the node puts it in its log, on /diagnostics and in the replies of its services.
No rclpy here: the rules are tested without a ROS graph.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

LARGE_FRAME_REMEDIES = (
    "large frames over best-effort QoS are often lost whole (one lost fragment drops the frame): "
    "set image_qos_reliability:=reliable, or subscribe to compressed images "
    "(image_compressed:=true with image_topic:=<camera>/compressed), or use a shared-memory "
    "transport whose segment holds a whole frame (a Fast DDS XML profile)"
)


@dataclass
class CameraInputHealth:
    """Counts of the image topic's traffic in a sliding window, and what they mean."""

    topic: str
    window_s: float = 10.0  # losses and frames counted over this many seconds
    stall_s: float = 5.0  # publishers but no frame for this long is a problem

    def __post_init__(self) -> None:
        self.publishers = 0
        self.frames_total = 0
        self.lost_total = 0
        self.incompatible: str = ""  # the policy of the last incompatible-QoS event
        self.kind = ""  # the kind of the last diagnosis (see diagnosis)
        self._frames: deque[float] = deque()
        self._lost: deque[tuple[float, int]] = deque()
        self._since = None  # when watching started (subscription made)
        self._last_frame = None

    def start(self, now: float) -> None:
        """The subscription exists from `now` (activate); counts restart."""
        self.__post_init__()
        self._since = now

    def frame(self, now: float) -> None:
        """A frame arrived."""
        self.frames_total += 1
        self._last_frame = now
        self._frames.append(now)

    def lost(self, now: float, count: int) -> None:
        """The middleware reported `count` more samples lost."""
        if count > 0:
            self.lost_total += count
            self._lost.append((now, count))

    def incompatible_qos(self, policy: str) -> None:
        """A publisher's QoS cannot match this subscription (`policy`, e.g. RELIABILITY)."""
        self.incompatible = policy

    def set_publishers(self, count: int) -> None:
        """Publishers on the topic now (count_publishers)."""
        self.publishers = count

    def _trim(self, now: float) -> tuple[int, int]:
        """Frames and lost samples within the window."""
        while self._frames and self._frames[0] < now - self.window_s:
            self._frames.popleft()
        while self._lost and self._lost[0][0] < now - self.window_s:
            self._lost.popleft()
        return len(self._frames), sum(c for _, c in self._lost)

    def diagnosis(self, now: float) -> str:
        """The problem with the camera input and what to change, or "" when frames get through.

        `kind` is set to the problem's kind ("", "incompatible_qos", "lost", "no_publisher",
        "stalled"): its counts change every call, its kind only when the situation does.
        """
        self.kind, text = self._diagnose(now)
        return text

    def _diagnose(self, now: float) -> tuple[str, str]:
        if self._since is None:
            return "", ""
        frames, lost = self._trim(now)
        quiet_s = now - (self._last_frame if self._last_frame is not None else self._since)
        topic = self.topic
        if self.incompatible and not frames:
            return "incompatible_qos", (
                f"a publisher on {topic} offers QoS incompatible with this subscription "
                f"({self.incompatible}): match image_qos_reliability to the camera's QoS "
                "(a best-effort camera needs image_qos_reliability:=best_effort)"
            )
        if lost and lost >= frames:
            return "lost", (
                f"{lost} frame(s) on {topic} lost in transport in the last {self.window_s:.0f} s, "
                f"{frames} received ({self.publishers} publisher(s)): {LARGE_FRAME_REMEDIES}"
            )
        if quiet_s < self.stall_s:
            return "", ""
        if self.publishers == 0:
            return "no_publisher", (
                f"no publisher on {topic} and no frame for {quiet_s:.0f} s: is the camera "
                "driver running, and is image_topic right?"
            )
        if not frames:
            return "stalled", (
                f"{self.publishers} publisher(s) on {topic} but no frame arrived in "
                f"{quiet_s:.0f} s: the camera may be stalled, or its frames are lost on the "
                f"way; {LARGE_FRAME_REMEDIES}"
            )
        return "", ""

    def values(self) -> dict[str, object]:
        """Key/values for /diagnostics."""
        return {
            "image_publishers": self.publishers,
            "frames_lost_in_transport": self.lost_total,
            "image_qos_incompatible": self.incompatible or "no",
        }
