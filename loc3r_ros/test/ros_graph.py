"""Helpers for tests that start loc3r_ros executables from the colcon install and talk DDS.

Every test process picks its own ROS_DOMAIN_ID and keeps discovery on loopback
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), so parallel runs never see each other and no traffic
leaves the machine.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_LIB = REPO_ROOT / "install" / "loc3r_ros" / "lib" / "loc3r_ros"


def isolate_ros_graph() -> int:
    """Choose a domain for this process (once) and keep DDS on loopback. Returns the domain."""
    if "LOC3R_TEST_DOMAIN" not in os.environ:
        domain = random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)
        os.environ["LOC3R_TEST_DOMAIN"] = str(domain)
        os.environ["ROS_DOMAIN_ID"] = str(domain)
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
    return int(os.environ["LOC3R_TEST_DOMAIN"])


def executable(name: str) -> Path:
    """Path of an installed loc3r_ros executable; fails clearly when the workspace is not built."""
    path = INSTALL_LIB / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run scripts/setup_env.sh (colcon build) first")
    return path


class NodeProcess:
    """An installed executable running in its own process (started, later stopped with SIGINT)."""

    def __init__(self, name: str, *args: str, log_path: Path | None = None) -> None:
        isolate_ros_graph()
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(executable(name)), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT, wait, and return the exit code.

        A process still running after `timeout` gets SIGABRT, so that faulthandler writes every
        thread's stack into its log (where it hung), then SIGKILL.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def spin_until(node, predicate, timeout: float) -> bool:
    """Spin `node` until predicate() is true or `timeout` seconds pass."""
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


def call(node, client, request, timeout: float = 30.0):
    """Call a service and wait for its reply (AssertionError on timeout)."""
    future = client.call_async(request)
    assert spin_until(node, future.done, timeout), f"no reply from {client.srv_name} in {timeout}s"
    return future.result()


@contextmanager
def ros_test_node(name: str) -> Iterator:
    """rclpy initialised and a plain node named `name` for the test; both torn down after."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()
