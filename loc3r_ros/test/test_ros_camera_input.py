"""Frames that do not arrive are named: the rules of CameraInputHealth (no ROS graph needed)."""

from __future__ import annotations

from loc3r_ros.camera_input import CameraInputHealth


def watch(**kwargs) -> CameraInputHealth:
    health = CameraInputHealth("/camera/image_raw", **kwargs)
    health.start(100.0)
    return health


def test_frames_arriving_is_healthy_and_silence_before_start_is_not_judged():
    assert CameraInputHealth("/cam").diagnosis(1e6) == ""  # not subscribed yet
    health = watch()
    health.set_publishers(1)
    for t in range(20):
        health.frame(100.0 + 0.1 * t)
    assert health.diagnosis(103.0) == "" and health.frames_total == 20


def test_no_publisher_is_named_after_the_stall_time():
    health = watch(stall_s=5.0)
    assert health.diagnosis(104.0) == ""  # too early to say
    problem = health.diagnosis(106.0)
    assert "no publisher on /camera/image_raw" in problem and "image_topic" in problem
    later = health.diagnosis(109.0)
    assert later != problem and health.kind == "no_publisher"  # the count moves, the kind not


def test_publishers_without_frames_say_what_to_change():
    health = watch(stall_s=5.0)
    health.set_publishers(2)
    problem = health.diagnosis(107.5)
    assert "2 publisher(s) on /camera/image_raw but no frame arrived in 8 s" in problem
    assert "image_qos_reliability:=reliable" in problem and "image_compressed:=true" in problem
    assert "shared-memory" in problem and health.kind == "stalled"


def test_losses_reported_by_the_middleware_are_named_at_once():
    health = watch(window_s=10.0)
    health.set_publishers(1)
    health.frame(100.5)
    for t in range(5):
        health.lost(101.0 + t, 1)
    problem = health.diagnosis(101.5 + 4)  # before the stall time: losses need no waiting
    assert (
        "5 frame(s) on /camera/image_raw lost in transport" in problem and "1 received" in problem
    )
    assert health.values()["frames_lost_in_transport"] == 5
    for t in range(30):  # frames get through again: the old losses leave the window
        health.frame(106.0 + 0.5 * t)
    assert health.kind == "lost"
    assert health.diagnosis(121.0) == "" and health.kind == ""
    assert health.values()["frames_lost_in_transport"] == 5  # the total stays


def test_a_few_losses_among_many_frames_are_not_a_problem():
    health = watch()
    health.set_publishers(1)
    for t in range(50):
        health.frame(100.0 + 0.1 * t)
    health.lost(104.0, 3)
    assert health.diagnosis(105.0) == ""


def test_incompatible_qos_is_named_with_the_parameter_to_change():
    health = watch()
    health.set_publishers(1)
    health.incompatible_qos("RELIABILITY")
    problem = health.diagnosis(100.5)
    assert "incompatible" in problem and "RELIABILITY" in problem
    assert "image_qos_reliability:=best_effort" in problem
    health.frame(101.0)  # a second, compatible publisher delivers: no longer the problem
    assert health.diagnosis(101.5) == ""


def test_start_forgets_the_previous_activation():
    health = watch()
    health.lost(100.5, 9)
    health.start(200.0)
    assert health.lost_total == 0 and health.diagnosis(201.0) == ""
