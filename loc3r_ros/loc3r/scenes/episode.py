"""Episodes: a room, a camera walk through it, rendered frames, and situated questions in BEV.

The BEV frame of an episode is the model's frame: gravity-aligned (the room's true z up),
origin at the first camera centre, x = the first camera's heading on the floor, y = left.
Positions and yaws of the questions are given in it (and in the world frame, for checks).
`bev_targets` gives the layout loss targets: the BEV (x, y) of the surface seen by each patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from loc3r.engine.frame_buffer import sample_uniform
from loc3r.engine.scene_frame import SceneFrame, bev_frame
from loc3r.scenes.render import Frame, camera_points, camera_pose, intrinsics, render
from loc3r.scenes.situations import QARecord, make_questions, make_situation
from loc3r.scenes.textures import RoomLook, make_look
from loc3r.scenes.world import Room, free_floor_points, generate_room

LOOKS = ("flat", "textured", "furnished")
WALKS = ("sweep", "scan", "room_scan")
ROOM_SCAN_STEPS = 24  # a room scan is a video of at least this many steps; frames sample it


@dataclass
class EpisodeConfig:
    """How episodes are made."""

    frames: int = 16  # the views the model sees per episode (Episode.frames)
    image_size: int = 96  # square, pixels
    fov_deg: float = 75.0
    camera_height: tuple[float, float] = (1.2, 1.6)  # metres
    pitch_deg: tuple[float, float] = (-20.0, 0.0)  # negative looks down
    roll_deg: float = 3.0  # max |roll|
    situations: int = 4  # situations per episode (each with several questions)
    # "flat": plain colours; "textured": wallpaper, wood, pictures (textures.py); "furnished":
    # textured, with each kind of furniture's details painted on (furniture.py)
    look: str = "flat"
    walk: str = "sweep"  # "sweep": one turn left over the walk; "scan": a smooth scan (scan_video)
    # turning 72-216 degrees; "room_scan": the same scan turning 270-400 degrees over a video of
    # max(frames, ROOM_SCAN_STEPS) steps, of which `frames` evenly spaced ones are rendered (as
    # the paper samples 32 frames of a ScanNet scan and the node's keyframes span the stream):
    # it sees most of the room whatever the frame count
    max_turn_deg: float = 15.0  # scan walks: at most this much turning between video steps
    # True: every step of the walk's video is rendered as well (Episode.video), for the camera
    # poses to come from the whole stream, as the node's pose source sees every keyframe and the
    # query samples them; the frames, the questions and the room are those of False
    stream_video: bool = False

    def __post_init__(self) -> None:
        if self.look not in LOOKS:
            raise ValueError(f"look={self.look!r}: expected one of {LOOKS}")
        if self.walk not in WALKS:
            raise ValueError(f"walk={self.walk!r}: expected one of {WALKS}")
        if self.frames < 1 or self.image_size < 8:
            raise ValueError("an episode needs frames >= 1 and image_size >= 8")


@dataclass
class Episode:
    """A rendered walk through one room with its questions."""

    seed: int
    room: Room
    frames: list[Frame]
    frame: SceneFrame  # BEV frame (from the first camera and true gravity)
    records: list[QARecord] = field(default_factory=list)  # positions/yaws in BEV
    look: RoomLook | None = None  # None: flat colours
    # with EpisodeConfig.stream_video: every step's RGB image, and the step of each frame
    video: list[np.ndarray] | None = None
    query_steps: list[int] | None = None

    def stream(self) -> tuple[list[np.ndarray], list[int]]:
        """What a pose source streams (the video, else the frames) and each frame's index in it."""
        if self.video is None or self.query_steps is None:
            return [f.rgb for f in self.frames], list(range(len(self.frames)))
        return self.video, list(self.query_steps)


def camera_walk(room: Room, config: EpisodeConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Camera-to-world poses of the configured walk (`config.walk`)."""
    poses, steps = walk_video(room, config, rng)
    return [poses[i] for i in steps]


def walk_video(
    room: Room, config: EpisodeConfig, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int]]:
    """Every step of the configured walk's video, and the steps its frames are (increasing).

    A room scan's video has more steps than frames; the other walks render every step.
    """
    if config.walk in ("scan", "room_scan"):
        return scan_video(room, config, rng)
    poses = sweep_walk(room, config, rng)
    return poses, list(range(len(poses)))


def sweep_walk(room: Room, config: EpisodeConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Waypoints on free floor, turning 270-400 degrees left over the walk, a new pitch per frame.

    The embedded default model's training walk. Every walk turns the same way, so a model can
    learn the turning as a prior instead of matching frames; `scan_video` does not allow that.
    """
    waypoints = free_floor_points(room, rng, 4, clearance=0.45)
    if len(waypoints) < 2:
        waypoints = np.array([[room.width / 2, room.depth / 2]] * 2)
    steps = np.linspace(0, len(waypoints) - 1, config.frames)
    positions = np.stack(
        [np.interp(steps, np.arange(len(waypoints)), waypoints[:, k]) for k in range(2)], axis=1
    )
    height = rng.uniform(*config.camera_height)
    start_yaw = rng.uniform(-math.pi, math.pi)
    sweep = rng.uniform(1.5 * math.pi, 2.2 * math.pi)  # turn around over the episode
    poses = []
    for i, (x, y) in enumerate(positions):
        t = i / max(config.frames - 1, 1)
        yaw = start_yaw + sweep * t + 0.3 * math.sin(6 * t)
        pitch = math.radians(rng.uniform(*config.pitch_deg))
        roll = math.radians(rng.uniform(-config.roll_deg, config.roll_deg))
        poses.append(camera_pose(np.array([x, y, height]), yaw, pitch, roll))
    return poses


def scan_video(
    room: Room, config: EpisodeConfig, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int]]:
    """A hand-held scan: smooth turns either way, pauses, a step back, a look around.

    Consecutive steps overlap as in a scan video: the heading changes by at most
    `config.max_turn_deg` between steps, pitch and roll drift smoothly, and the camera moves at
    walking pace between waypoints on free floor (sometimes it stops, sometimes it backs up).
    A "scan" has a frame at every step; a "room_scan" is a video of at least `ROOM_SCAN_STEPS`
    steps whose `config.frames` frames are evenly spaced steps (consecutive frames then differ by
    up to `max_turn_deg` times the spacing). Returns every step's pose and the frames' steps.
    """
    count = max(config.frames, ROOM_SCAN_STEPS) if config.walk == "room_scan" else config.frames
    waypoints = free_floor_points(room, rng, int(rng.integers(2, 4)), clearance=0.45)
    if len(waypoints) < 2:
        waypoints = np.array([[room.width / 2, room.depth / 2]] * 2)
    # progress along the waypoint polyline: walk, pause, back up a little, walk on
    speed = rng.uniform(0.5, 1.0, count)
    speed[rng.random(count) < 0.2] = 0.0  # pauses
    speed[rng.random(count) < 0.1] *= -0.6  # steps back
    speed[0] = 0.0
    progress = np.cumsum(speed)
    span = progress.max() - progress.min()
    progress = (progress - progress.min()) / span if span > 0 else np.zeros(count)
    steps = progress * (len(waypoints) - 1)
    positions = np.stack(
        [np.interp(steps, np.arange(len(waypoints)), waypoints[:, k]) for k in range(2)], axis=1
    )
    # heading: a smooth turn either way plus a look-around, capped per frame
    t = np.linspace(0.0, 1.0, count)
    to_centre = np.array([room.width / 2, room.depth / 2]) - positions[0]
    start_yaw = math.atan2(to_centre[1], to_centre[0]) + rng.uniform(-1.0, 1.0)
    low, high = (1.5, 2.2) if config.walk == "room_scan" else (0.4, 1.2)  # turns of pi
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(low * math.pi, high * math.pi)
    look_around = rng.uniform(0.0, 0.5) * np.sin(2 * math.pi * rng.uniform(0.5, 2.0) * t)
    yaw = start_yaw + turn * (t - np.sin(2 * math.pi * t) / (2 * math.pi)) + look_around
    cap = math.radians(config.max_turn_deg)
    yaw = yaw[0] + np.concatenate([[0.0], np.cumsum(np.clip(np.diff(yaw), -cap, cap))])
    drift = np.cumsum(rng.normal(0.0, 1.5, (count, 2)), axis=0)  # degrees, a random walk
    pitch = np.clip(np.mean(config.pitch_deg) + drift[:, 0], *config.pitch_deg)
    roll = np.clip(drift[:, 1] * 0.5, -config.roll_deg, config.roll_deg)
    height = rng.uniform(*config.camera_height) + np.cumsum(rng.normal(0.0, 0.005, count))
    poses = [
        camera_pose(np.array([x, y, h]), a, math.radians(p), math.radians(r))
        for (x, y), h, a, p, r in zip(positions, height, yaw, pitch, roll, strict=True)
    ]
    return poses, sample_uniform(config.frames, count)  # the engine's query rule


def make_episode(seed: int, config: EpisodeConfig | None = None) -> Episode:
    """Room, walk, frames and situated questions for `seed` (deterministic)."""
    config = config or EpisodeConfig()
    rng = np.random.default_rng(seed)
    room = generate_room(seed)
    K = intrinsics(config.image_size, config.fov_deg)  # noqa: N806
    size = (config.image_size, config.image_size)
    look = None
    if config.look != "flat":
        look = make_look(room, seed, furnished=config.look == "furnished")
    poses, steps = walk_video(room, config, rng)
    video = query_steps = None
    if config.stream_video:
        rendered = [render(room, pose, K, size, look) for pose in poses]
        frames = [rendered[i] for i in steps]
        video, query_steps = [f.rgb for f in rendered], list(steps)
    else:
        frames = [render(room, poses[i], K, size, look) for i in steps]
    frame = bev_frame(frames[0].pose_c2w, np.array([0.0, 0.0, 1.0]), "given")
    episode = Episode(seed, room, frames, frame, look=look, video=video, query_steps=query_steps)
    # heading of the BEV x axis in the world: yaw_bev = yaw_world - heading0
    heading0 = math.atan2(frame.bev_from_world[0, 1], frame.bev_from_world[0, 0])
    for _ in range(config.situations * 3):
        if len({r.situation for r in episode.records}) >= config.situations:
            break
        situated = make_situation(room, rng)
        if situated is None:
            continue
        anchor = room.objects[situated.anchor_id].centre  # BEV, as object_position
        anchor_xy = [float(v) for v in frame.points(np.array([anchor], dtype=float))[0, :2]]
        for record in make_questions(room, situated, rng):
            world_xy = np.array([*record.position, frames[0].pose_c2w[2, 3]])
            bev_xy = frame.points(world_xy[None])[0, :2]
            record.fields["world_position"] = list(record.position)
            record.fields["world_yaw"] = record.yaw
            record.position = (float(bev_xy[0]), float(bev_xy[1]))
            record.yaw = math.remainder(record.yaw - heading0, 2 * math.pi)
            if "object_id" in record.fields:  # where the question's object is, BEV metres
                centre = room.objects[record.fields["object_id"]].centre
                object_xy = frame.points(np.array([[centre[0], centre[1], centre[2]]]))[0, :2]
                record.fields["object_position"] = [float(v) for v in object_xy]
            record.fields["anchor_position"] = list(anchor_xy)
            record.fields["anchor_id"] = situated.anchor_id
            record.fields["anchor_kind"] = room.objects[situated.anchor_id].kind
            record.fields["target_id"] = situated.target_id
            episode.records.append(record)
    return episode


def cell_edges(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column edges (grid + 1 each) splitting an image into the VLM's pooled cells."""
    return np.linspace(0, height, grid + 1).astype(int), np.linspace(0, width, grid + 1).astype(int)


def bev_targets(
    frame: Frame, scene: SceneFrame, grid: int, mode: str = "centre", max_range: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, grid, 2) BEV x, y of the surface seen by each image cell, and a validity mask.

    mode "centre": the cell's centre pixel; "mean": the mean over the cell's valid pixels.
    Pixels with no depth or beyond `max_range` are invalid.
    """
    if mode not in ("centre", "mean"):
        raise ValueError(f"mode must be 'centre' or 'mean', got {mode!r}")
    height, width = frame.depth.shape
    z = frame.depth.astype(np.float64)
    world = camera_points(frame.depth, frame.K) @ frame.pose_c2w[:3, :3].T + frame.pose_c2w[:3, 3]
    bev = scene.points(world.reshape(-1, 3))[:, :2].reshape(height, width, 2)
    valid = np.isfinite(z) & (z > 0) & (z < max_range)
    rows, cols = cell_edges(height, width, grid)
    targets = np.zeros((grid, grid, 2))
    mask = np.zeros((grid, grid), dtype=bool)
    for i in range(grid):
        for j in range(grid):
            if mode == "centre":
                r, c = (rows[i] + rows[i + 1]) // 2, (cols[j] + cols[j + 1]) // 2
                targets[i, j], mask[i, j] = bev[r, c], valid[r, c]
            else:
                cell = valid[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
                if cell.any():
                    targets[i, j] = bev[rows[i] : rows[i + 1], cols[j] : cols[j + 1]][cell].mean(0)
                    mask[i, j] = True
    return targets.astype(np.float32), mask


def object_cover(object_id: np.ndarray, num_objects: int, grid: int) -> np.ndarray:
    """(grid, grid, num_objects) fraction of each image cell that shows each object.

    `object_id` is a frame's (H, W) id map (-1 for room surfaces); cells split the image like
    bev_targets' cells, so cell (i, j) is the pooled patch the VLM sees there.
    """
    rows, cols = cell_edges(*object_id.shape, grid)
    cover = np.zeros((grid, grid, num_objects), dtype=np.float32)
    for i in range(grid):
        for j in range(grid):
            cell = object_id[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].ravel()
            counts = np.bincount(cell[cell >= 0], minlength=num_objects)[:num_objects]
            cover[i, j] = counts / max(cell.size, 1)
    return cover
