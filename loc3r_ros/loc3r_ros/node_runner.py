"""Run a node on a MultiThreadedExecutor until shutdown (the nodes' shared `main`)."""

from __future__ import annotations

import faulthandler
import sys
import time
import traceback
from collections.abc import Callable

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

# Launch escalates SIGINT to SIGTERM after 5 s and to SIGKILL 5 s later; a normal exit here takes
# 1-2 s (most of it the interpreter's own teardown; a model process gets 4 s at most to stop).
TEARDOWN_LIMIT_S = 8.0
_owns_process = False  # run_node is this process's main: it may bound (and end) the teardown


def bound_teardown(limit_s: float = TEARDOWN_LIMIT_S) -> None:
    """From now on, a process still alive after `limit_s` dumps every thread's stack and exits 1.

    faulthandler's watchdog is a C thread: it fires even when the hang holds the GIL or sits in
    the interpreter's own teardown. Only in a process that `run_node` runs: a node hosted
    elsewhere (a test, a component container) must not end its host.
    """
    if _owns_process:
        faulthandler.dump_traceback_later(limit_s, exit=True, file=sys.stderr)


def spin(executor: Executor, limit: int = 100, window_s: float = 1.0) -> int:
    """`executor.spin()` until shutdown, through rclpy's race with entities destroyed mid-wait.

    rclpy (9) builds each wait set from a list of waitables taken a moment earlier; a QoS event
    handler destroyed in between (a lifecycle transition destroying a subscription, on another
    executor thread) raises InvalidHandle in the spinning thread and would end the node. The
    wait set is rebuilt from the node's current entities on the next call, so spinning again is
    the whole recovery. Each recovery is logged with its traceback; more than `limit` within
    `window_s` is not that race (an entity destroyed but left in the node, a callback using a
    destroyed handle every time) and is raised. Returns how many times it recovered.

    A shutdown (Ctrl-C, SIGTERM) that invalidates the context between the executor's check of
    it and its next wait set raises RCLError ("the given context is not valid"): with the
    context no longer ok that is the shutdown itself, and spinning ends as it would have.
    """
    logger = rclpy.logging.get_logger("node_runner")
    recovered, recent = 0, []
    while True:
        try:
            executor.spin()
            return recovered
        except _rclpy.RCLError:
            if executor.context.ok():  # not a shutdown: a real failure
                raise
            return recovered
        except InvalidHandle:
            now = time.monotonic()
            recent = [t for t in recent if now - t < window_s] + [now]
            if len(recent) > limit:
                raise
            recovered += 1
            logger.warning(
                "spinning on after an entity was destroyed while the executor waited on it "
                f"(rclpy's wait-set race):\n{traceback.format_exc()}"
            )


def run_node(
    make_node: Callable[[], Node],
    args: list[str] | None = None,
    threads: int = 4,
    teardown_limit_s: float = TEARDOWN_LIMIT_S,
) -> None:
    """Init rclpy, build the node, spin until Ctrl-C or shutdown, clean up in every case.

    The teardown is explicit and ordered (node, executor threads, context, then the DDS
    participant) rather than left to the interpreter's garbage collector at exit, whose order is
    arbitrary. Should anything still hang past `teardown_limit_s`, faulthandler writes every
    thread's stack to stderr and the process exits with status 1 instead of waiting for SIGKILL.
    """
    global _owns_process
    _owns_process = True
    rclpy.init(args=args)
    context = rclpy.utilities.get_default_context()
    node = None
    executor = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        bound_teardown(teardown_limit_s)
        if node is not None:  # first: it stops the model thread that callbacks may wait on
            node.destroy_node()
        if executor is not None:  # joins its threads (rclpy 9 ignores a timeout here)
            executor.shutdown()
        rclpy.try_shutdown()
        context.destroy()
