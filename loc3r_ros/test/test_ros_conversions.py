"""Image and pose conversions of the ROS layer (message types only; no graph needed)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from loc3r.engine import AgentPose  # noqa: E402
from loc3r.errors import InputError  # noqa: E402
from loc3r_ros.conversions import (  # noqa: E402
    UNKNOWN_VARIANCE,
    agent_pose_to_msg,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    rgb_to_image_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from loc3r_ros.params import PARAMS, validate  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    padded = np.zeros((h, row.shape[1] + pad), np.uint8)
    padded[:, : row.shape[1]] = row
    return Image(
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=bigendian,
        step=padded.shape[1],
        data=padded.tobytes(),
    )


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_rgb(encoding, pixels, pad):
    out = image_msg_to_rgb(make_image(np.ascontiguousarray(pixels), encoding, pad))
    np.testing.assert_array_equal(out, RGB)


def test_mono_and_16_bit():
    grey = RGB[:, :, 0].copy()
    out = image_msg_to_rgb(make_image(grey, "mono8"))
    assert out.shape == (5, 7, 3) and (out == grey[:, :, None]).all()
    wide = (RGB.astype(np.uint16) * 256 + 7).astype(">u2")
    out = image_msg_to_rgb(make_image(wide, "rgb16", bigendian=True))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "depth encoding"),
        (Image(height=2, width=2, encoding="yuv9", step=4, data=bytes(8)), "unsupported"),
        (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), "empty image"),
        (Image(height=2, width=2, encoding="rgb8", step=5, data=bytes(10)), "step 5"),
        (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(7)), "7 bytes"),
    ],
)
def test_malformed_images_raise_input_error(msg, reason):
    with pytest.raises(InputError, match=reason):
        image_msg_to_rgb(msg)


def test_compressed_round_trip_and_truncated_jpeg():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_msg_to_rgb(CompressedImage(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(out, RGB)
    big = cv2.resize(RGB, (64, 48))
    ok, jpg = cv2.imencode(".jpg", big)
    with pytest.raises(InputError, match="could not decode"):
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=jpg.tobytes()[:40]))
    with pytest.raises(InputError, match="no data"):
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b""))


def test_rgb_to_image_msg_round_trip():
    for encoding in ("rgb8", "bgr8"):
        np.testing.assert_array_equal(
            image_msg_to_rgb(rgb_to_image_msg(RGB, Image, encoding=encoding)), RGB
        )


def test_agent_pose_to_msg_covariance_and_heading():
    pose = AgentPose(x=1.5, y=-2.0, yaw=math.radians(100), sigma_x=0.3, sigma_y=0.4, yaw_spread=0.2)
    msg = agent_pose_to_msg(pose)
    q = msg.pose.orientation
    assert math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y**2 + q.z**2)) == pytest.approx(
        math.radians(100)
    )
    cov = np.array(msg.covariance).reshape(6, 6)
    np.testing.assert_allclose(
        np.diag(cov), [0.09, 0.16, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, 0.04]
    )
    assert (cov == cov.T).all() and (msg.pose.position.x, msg.pose.position.y) == (1.5, -2.0)


def test_stamp_conversion_round_trip():
    from builtin_interfaces.msg import Time

    t = stamp_from_ns(1_700_000_000_123_456_789, Time)
    assert (t.sec, t.nanosec) == (1_700_000_000, 123_456_789)
    assert stamp_to_ns(t) == 1_700_000_000_123_456_789


def test_param_table_validation():
    names = [p.name for p in PARAMS]
    assert len(names) == len(set(names))
    for spec in PARAMS:
        assert validate(spec.name, spec.default) is None, spec.name
    assert "one of" in validate("device", "tpu")
    assert ">= 1" in validate("max_text_chars", 0)
    assert "must be int" in validate("keyframe_capacity", True)
    assert validate("query_timeout_s", 5) is None  # ints are fine for float params


def test_readme_parameter_table_matches_the_declared_parameters():
    from conftest import REPO_ROOT

    from loc3r_ros.params import markdown_table

    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- params:begin -->\n")[1].split("\n<!-- params:end -->")[0]
    assert block == markdown_table()
    from loc3r_ros.speech_params import markdown_table as speech_table

    block = readme.split("<!-- speech-params:begin -->\n")[1].split("\n<!-- speech-params:end -->")[
        0
    ]
    assert block == speech_table()


def test_compressed_preview_is_a_reduced_decode():
    from loc3r_ros.conversions import compressed_msg_preview

    big = np.zeros((64, 96, 3), np.uint8)
    big[:, 48:] = (255, 0, 0)  # right half red (RGB)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    preview = compressed_msg_preview(CompressedImage(format="jpeg", data=jpg.tobytes()), 4)
    assert preview.shape == (16, 24, 3) and preview[8, 20, 0] > 200 and preview[8, 2, 0] < 50
    with pytest.raises(InputError, match="could not decode"):
        compressed_msg_preview(CompressedImage(format="jpeg", data=jpg.tobytes()[:30]))


def test_parameter_updates_apply_all_or_nothing():
    from rclpy.parameter import Parameter

    from loc3r_ros.params import accept_parameters

    store = {"max_text_chars": 500, "query_timeout_s": 30.0}
    good = [Parameter("max_text_chars", value=200), Parameter("query_timeout_s", value=10.0)]
    assert accept_parameters(good, store) is None
    assert store == {"max_text_chars": 200, "query_timeout_s": 10.0}
    mixed = [Parameter("max_text_chars", value=300), Parameter("query_timeout_s", value=-1.0)]
    reason = accept_parameters(mixed, store)
    assert reason and "query_timeout_s" in reason
    assert store == {"max_text_chars": 200, "query_timeout_s": 10.0}  # nothing applied
