"""loc3r_node: camera in, situated agent pose (TF, PoseStamped) and answers out.

Subscriptions:
  <image_topic>          sensor_msgs/Image or CompressedImage (QoS from parameters)
Publications (under the node's name, default /loc3r/...):
  ~/agent_pose           geometry_msgs/PoseStamped        agent pose in the scene frame
  ~/agent_pose_cov       geometry_msgs/PoseWithCovarianceStamped
  ~/result               loc3r_interfaces/SituatedResult   latched (transient local)
  ~/status               loc3r_interfaces/Status
  /tf                    tf2_msgs/TFMessage               scene_frame -> agent_frame
Services:
  ~/ask                  loc3r_interfaces/srv/Ask
  ~/localize             loc3r_interfaces/srv/Localize
  ~/reset                std_srvs/srv/Trigger
Parameters: see loc3r_ros/params.py (one table, also in the README).

The image callback only converts the image and hands it to the engine (a thumbnail comparison);
queries run in a separate callback group, so a running query never stalls image intake.
"""

from __future__ import annotations

import time

import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from loc3r_interfaces.msg import SituatedResult, Status
from loc3r_interfaces.srv import Ask, Localize
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from loc3r.engine import EngineConfig, KeyframeConfig, QueryResult, SceneEngine
from loc3r.errors import Loc3rError
from loc3r_ros.conversions import (
    agent_pose_to_msg,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    stamp_from_ns,
    stamp_to_ns,
)
from loc3r_ros.params import PARAMS, validate

LATCHED = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    reliability=ReliabilityPolicy.RELIABLE,
)


class Loc3rNode(Node):
    """ROS 2 front end of the scene engine."""

    def __init__(self, **kwargs) -> None:
        super().__init__("loc3r", **kwargs)
        for spec in PARAMS:
            descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.p = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        reasons = [r for name, value in self.p.items() if (r := validate(name, value))]
        if reasons:
            raise ValueError("invalid parameters: " + "; ".join(reasons))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.engine = SceneEngine(self._engine_config(), pipeline=None)
        self.frames_received = 0
        self.frames_dropped = 0
        self.last_latency_s = 0.0
        self.latency_sum_s = 0.0
        self.queries_answered = 0

        self.pose_pub = self.create_publisher(PoseStamped, "~/agent_pose", 10)
        self.pose_cov_pub = self.create_publisher(PoseWithCovarianceStamped, "~/agent_pose_cov", 10)
        self.result_pub = self.create_publisher(SituatedResult, "~/result", LATCHED)
        self.status_pub = self.create_publisher(Status, "~/status", 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)

        image_group = MutuallyExclusiveCallbackGroup()
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self.p["image_qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        image_qos = QoSProfile(
            depth=self.p["image_qos_depth"],
            history=HistoryPolicy.KEEP_LAST,
            reliability=reliability,
        )
        if self.p["image_compressed"]:
            self.image_sub = self.create_subscription(
                CompressedImage,
                self.p["image_topic"],
                self.compressed_cb,
                image_qos,
                callback_group=image_group,
            )
        else:
            self.image_sub = self.create_subscription(
                Image, self.p["image_topic"], self.image_cb, image_qos, callback_group=image_group
            )

        query_group = ReentrantCallbackGroup()
        self.ask_srv = self.create_service(Ask, "~/ask", self.ask_cb, callback_group=query_group)
        self.localize_srv = self.create_service(
            Localize, "~/localize", self.localize_cb, callback_group=query_group
        )
        self.reset_srv = self.create_service(
            Trigger, "~/reset", self.reset_cb, callback_group=query_group
        )
        self.status_timer = self.create_timer(self.p["status_period_s"], self.status_cb)
        self.get_logger().info(
            f"listening on {self.p['image_topic']}; model: {self.engine.no_model_reason}"
        )

    # --- configuration -------------------------------------------------------------------------
    def _engine_config(self) -> EngineConfig:
        return EngineConfig(
            keyframes=KeyframeConfig(
                min_interval_s=self.p["keyframe_min_interval_s"],
                max_interval_s=self.p["keyframe_max_interval_s"],
                min_change=self.p["keyframe_min_change"],
                capacity=self.p["keyframe_capacity"],
            ),
            max_text_chars=self.p["max_text_chars"],
            query_timeout_s=self.p["query_timeout_s"],
        )

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            reason = validate(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for param in params:
            self.p[param.name] = param.value
        self.engine.config.max_text_chars = self.p["max_text_chars"]
        self.engine.config.query_timeout_s = self.p["query_timeout_s"]
        return SetParametersResult(successful=True)

    # --- camera --------------------------------------------------------------------------------
    def image_cb(self, msg: Image) -> None:
        """Hand a raw image to the engine; malformed images are counted and dropped."""
        self._ingest(msg.header.stamp, lambda: image_msg_to_rgb(msg))

    def compressed_cb(self, msg: CompressedImage) -> None:
        """Hand a compressed image to the engine (decoded here, lazily)."""
        self._ingest(msg.header.stamp, lambda: compressed_msg_to_rgb(msg))

    def _ingest(self, stamp, decode) -> None:
        self.frames_received += 1
        try:
            self.engine.add_frame(decode(), stamp_to_ns(stamp))
        except Loc3rError as exc:
            self.frames_dropped += 1
            self.get_logger().warning(f"dropped image: {exc}", throttle_duration_sec=5.0)

    # --- services ------------------------------------------------------------------------------
    def ask_cb(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        """Answer a question, optionally from a described situation."""
        start = time.perf_counter()
        response.success = False
        try:
            result = self.engine.ask(request.question, request.situation)
        except Loc3rError as exc:
            response.message = str(exc)
        except Exception as exc:  # a model failure must not take the node down
            self.get_logger().error(f"ask failed: {exc!r}")
            response.message = f"internal error: {type(exc).__name__}: {exc}"
        else:
            response.success, response.message, response.answer = True, "ok", result.answer
            self._fill_query_fields(response, result)
            self._publish_result(request.situation, request.question, result)
        response.latency_s = time.perf_counter() - start
        return response

    def localize_cb(
        self, request: Localize.Request, response: Localize.Response
    ) -> Localize.Response:
        """Localize the agent described by a situation."""
        start = time.perf_counter()
        response.success = False
        try:
            result = self.engine.localize(request.situation)
        except Loc3rError as exc:
            response.message = str(exc)
        except Exception as exc:
            self.get_logger().error(f"localize failed: {exc!r}")
            response.message = f"internal error: {type(exc).__name__}: {exc}"
        else:
            response.success, response.message = True, "ok"
            self._fill_query_fields(response, result)
            self._publish_result(request.situation, "", result)
        response.latency_s = time.perf_counter() - start
        return response

    def reset_cb(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Forget the scene."""
        self.engine.reset()
        response.success, response.message = True, "scene reset"
        return response

    def _fill_query_fields(self, response, result: QueryResult) -> None:
        response.num_frames = result.num_frames
        response.first_frame_stamp = stamp_from_ns(result.first_stamp_ns, Time)
        response.last_frame_stamp = stamp_from_ns(result.last_stamp_ns, Time)
        self.last_latency_s = result.latency_s
        self.latency_sum_s += result.latency_s
        self.queries_answered += 1
        if result.pose is not None:
            if hasattr(response, "has_pose"):
                response.has_pose = True
            response.pose.header.frame_id = self.p["scene_frame"]
            response.pose.header.stamp = response.last_frame_stamp
            response.pose.pose = agent_pose_to_msg(result.pose)
            response.position_sigma_m = result.pose.position_sigma
            response.yaw_spread_rad = result.pose.yaw_spread

    def _publish_result(self, situation: str, question: str, result: QueryResult) -> None:
        stamp = stamp_from_ns(result.last_stamp_ns, Time)
        msg = SituatedResult()
        msg.header.stamp, msg.header.frame_id = stamp, self.p["scene_frame"]
        msg.situation, msg.question, msg.answer = situation, question, result.answer
        msg.num_frames = result.num_frames
        msg.first_frame_stamp = stamp_from_ns(result.first_stamp_ns, Time)
        msg.last_frame_stamp = stamp
        msg.latency_s = result.latency_s
        if result.pose is not None:
            msg.has_pose = True
            msg.pose = agent_pose_to_msg(result.pose)
            msg.position_sigma_m = result.pose.position_sigma
            msg.yaw_spread_rad = result.pose.yaw_spread
            pose_cov = PoseWithCovarianceStamped(header=msg.header, pose=msg.pose)
            self.pose_cov_pub.publish(pose_cov)
            self.pose_pub.publish(PoseStamped(header=msg.header, pose=msg.pose.pose))
            tf = TransformStamped(header=msg.header, child_frame_id=self.p["agent_frame"])
            position, orientation = msg.pose.pose.position, msg.pose.pose.orientation
            tf.transform.translation.x = position.x
            tf.transform.translation.y = position.y
            tf.transform.translation.z = position.z
            tf.transform.rotation = orientation
            self.tf_pub.publish(TFMessage(transforms=[tf]))
        self.result_pub.publish(msg)

    # --- status --------------------------------------------------------------------------------
    def status_cb(self) -> None:
        """Publish ~/status."""
        msg = Status()
        msg.header.stamp = self.get_clock().now().to_msg()
        ready = self.engine.pipeline is not None
        msg.state = Status.STATE_READY if ready else Status.STATE_NO_MODEL
        msg.message = "ready" if ready else self.engine.no_model_reason
        msg.frames_received = self.frames_received
        msg.frames_dropped = self.frames_dropped
        msg.keyframes = len(self.engine.buffer)
        if self.queries_answered:
            msg.last_query_latency_s = self.last_latency_s
            msg.mean_query_latency_s = self.latency_sum_s / self.queries_answered
        self.status_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    """Run loc3r_node on a multi-threaded executor until shutdown."""
    rclpy.init(args=args)
    node = None
    try:
        node = Loc3rNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
