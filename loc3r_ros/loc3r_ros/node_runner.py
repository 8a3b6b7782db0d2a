"""Run a node on a MultiThreadedExecutor until shutdown (the nodes' shared `main`)."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


def run_node(
    make_node: Callable[[], Node], args: list[str] | None = None, threads: int = 4
) -> None:
    """Init rclpy, build the node, spin until Ctrl-C or shutdown, clean up in every case."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
