"""Conversions between ROS messages and the core's numpy types (no cv_bridge needed).

Images: sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8, mono8 (and their 16-bit colour variants
scaled down) and sensor_msgs/CompressedImage (JPEG/PNG) become (H, W, 3) uint8 RGB. Depth and
other single-channel 16/32-bit encodings are rejected with a message: the model needs colour.
Poses: the core's AgentPose becomes geometry_msgs PoseWithCovariance.
"""

from __future__ import annotations

import array
import math

import cv2
import numpy as np
from geometry_msgs.msg import PoseWithCovariance
from scipy.spatial.transform import Rotation

from loc3r.engine import AgentPose
from loc3r.errors import InputError

# encoding -> (channels, numpy dtype, conversion from that layout to RGB or None)
_ENCODINGS: dict[str, tuple[int, str, int | None]] = {
    "rgb8": (3, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "rgba8": (4, "u1", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8uc1": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8uc3": (3, "u1", cv2.COLOR_BGR2RGB),  # OpenCV's default channel order
    "rgb16": (3, "u2", None),
    "bgr16": (3, "u2", cv2.COLOR_BGR2RGB),
    "mono16": (1, "u2", cv2.COLOR_GRAY2RGB),
}
_REJECTED = {
    "16uc1": "16UC1 is a depth encoding; loc3r needs a colour image",
    "32fc1": "32FC1 is a depth encoding; loc3r needs a colour image",
}
MAX_PIXELS = 8192 * 8192


def image_msg_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. Raises InputError naming what is wrong."""
    encoding = msg.encoding.lower()
    if encoding in _REJECTED:
        raise InputError(f"unsupported image encoding '{msg.encoding}': {_REJECTED[encoding]}")
    if encoding not in _ENCODINGS:
        raise InputError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(_ENCODINGS)})"
        )
    channels, kind, to_rgb = _ENCODINGS[encoding]
    height, width = int(msg.height), int(msg.width)
    if height == 0 or width == 0:
        raise InputError(f"empty image ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise InputError(f"image too large ({width}x{height})")
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise InputError(f"image step {step} is smaller than a row ({row_bytes} bytes)")
    data = msg.data  # array.array('B') from rclpy: a buffer, read without copying
    buffer = data if isinstance(data, (bytes, bytearray, memoryview, array.array)) else bytes(data)
    if len(buffer) < step * height:
        raise InputError(f"image data has {len(buffer)} bytes, expected {step * height}")
    rows = np.frombuffer(buffer, np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, :row_bytes].view(dtype).reshape(height, width, channels)
    if dtype.itemsize == 2:
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if to_rgb is None:
        return np.ascontiguousarray(pixels)
    if channels == 1:
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(pixels), to_rgb)


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB."""
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    if raw.size == 0:
        raise InputError("compressed image has no data")
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"could not decode compressed image (format '{msg.format}')")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def compressed_msg_preview(msg, reduction: int = 4) -> np.ndarray:
    """A CompressedImage decoded at 1/2, 1/4 or 1/8 size (cheap for JPEG), RGB uint8."""
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduction]  # fmt: skip
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    if raw.size == 0:
        raise InputError("compressed image has no data")
    bgr = cv2.imdecode(raw, flags)
    if bgr is None:
        raise InputError(f"could not decode compressed image (format '{msg.format}')")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image_msg(image: np.ndarray, msg_type, *, encoding: str = "rgb8"):
    """(H, W, 3) uint8 RGB -> a new `msg_type` (sensor_msgs/Image) in rgb8 or bgr8."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding must be rgb8 or bgr8, got {encoding}")
    pixels = image if encoding == "rgb8" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    msg = msg_type()
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def yaw_to_quaternion_xyzw(yaw: float) -> tuple[float, float, float, float]:
    """A rotation of `yaw` radians about +z as a ROS (x, y, z, w) quaternion."""
    x, y, z, w = Rotation.from_euler("z", yaw).as_quat()
    return float(x), float(y), float(z), float(w)


# Variance given to the pose components the model does not estimate (z, roll, pitch).
UNKNOWN_VARIANCE = 1e6


def agent_pose_to_msg(pose: AgentPose) -> PoseWithCovariance:
    """AgentPose (BEV = scene frame) -> PoseWithCovariance; covariance from the model's sigma.

    Row-major 6x6 over (x, y, z, roll, pitch, yaw): sigma_x^2, sigma_y^2 and yaw_spread^2 on the
    diagonal; z, roll and pitch are not estimated and get UNKNOWN_VARIANCE.
    """
    msg = PoseWithCovariance()
    msg.pose.position.x, msg.pose.position.y = float(pose.x), float(pose.y)
    msg.pose.position.z = float(pose.height)
    q = yaw_to_quaternion_xyzw(pose.yaw)
    (
        msg.pose.orientation.x,
        msg.pose.orientation.y,
        msg.pose.orientation.z,
        msg.pose.orientation.w,
    ) = q
    cov = np.zeros((6, 6))
    cov[0, 0], cov[1, 1] = pose.sigma_x**2, pose.sigma_y**2
    cov[2, 2] = cov[3, 3] = cov[4, 4] = UNKNOWN_VARIANCE
    cov[5, 5] = min(pose.yaw_spread, math.pi) ** 2
    msg.covariance = cov.reshape(-1).tolist()
    return msg


def stamp_from_ns(stamp_ns: int, time_type):
    """Nanoseconds -> builtin_interfaces/Time."""
    t = time_type()
    t.sec, t.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return t


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def confidence_to_msg(confidence, msg_type):
    """A loc3r.engine Confidence as loc3r_interfaces/Confidence (NaN for what is unknown)."""
    nan = float("nan")
    msg = msg_type()
    msg.answer_probability = (
        nan if confidence.answer_probability is None else float(confidence.answer_probability)
    )
    msg.cut3r_confidence = (
        nan if confidence.cut3r_confidence is None else float(confidence.cut3r_confidence)
    )
    domain = confidence.domain
    msg.domain_checked = domain is not None
    msg.in_domain = bool(domain.in_domain) if domain is not None else False
    msg.domain_score = float(domain.score) if domain is not None else nan
    msg.domain_threshold = float(domain.threshold) if domain is not None else nan
    msg.note = confidence.note
    return msg
