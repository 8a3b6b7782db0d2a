"""What loc3r's managed (lifecycle) nodes share: their state, autostart, and "not active" replies.

States and transitions are ROS 2's (design.ros2.org/articles/node_lifecycle.html): a node starts
unconfigured; configure loads what it needs (inactive); activate subscribes and serves (active);
deactivate stops intake; cleanup frees everything (unconfigured); shutdown ends it (finalized).
`ros2 lifecycle set /loc3r configure` (or a lifecycle manager) drives them; with `autostart` the
node drives itself through configure and activate at start.
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from loc3r_ros.node_runner import TEARDOWN_LIMIT_S, bound_teardown


def lifecycle_state(node: LifecycleNode) -> str:
    """The node's current state label: unconfigured, inactive, active, finalized, or a transition.

    rclpy exposes it only through the get_state service; the state machine holds it.
    """
    return node._state_machine.current_state[1]  # noqa: SLF001


def not_active_reply(node: LifecycleNode, why: str = "") -> str:
    """The message a service gives when the node is not active, with what to type."""
    state = lifecycle_state(node)
    name = node.get_fully_qualified_name()
    step = "configure, then activate" if state == "unconfigured" else "activate"
    detail = f" ({why})" if why else ""
    return f"{state}: the node is not active{detail}; ros2 lifecycle set {name} {step}"


def exit_after_shutdown(node: LifecycleNode, delay_s: float = 0.5) -> None:
    """End the process's spin shortly after the shutdown transition (once it has been answered).

    The teardown that follows is bounded (`bound_teardown`): the context's shutdown destroys the
    node on an executor thread, before `run_node`'s own teardown starts.
    """
    bound_teardown(TEARDOWN_LIMIT_S + delay_s)
    node.create_timer(delay_s, node.context.try_shutdown)


def timer_period(value: object, reason: str | None) -> float:
    """A period parameter for a timer made before configure: 1 s while it is invalid (`reason`)."""
    return 1.0 if reason else float(value)


def autostart(node: LifecycleNode) -> bool:
    """Configure then activate `node` now (at the end of its constructor); True when active.

    What a plain node did at start-up; a transition that fails is logged and the node stays
    alive in the state it reached, for a lifecycle manager or `ros2 lifecycle set` to retry.
    """
    configured = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    active = configured and node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    if not active:
        node.get_logger().error(f"autostart stopped in state '{lifecycle_state(node)}'")
    return active
