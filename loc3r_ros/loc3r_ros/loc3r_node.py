"""loc3r_node: camera in, situated agent pose (TF, PoseStamped) and answers out.

Subscriptions:
  <image_topic>          sensor_msgs/Image or CompressedImage (QoS from parameters)
Publications (under the node's name, default /loc3r/...):
  ~/agent_pose           geometry_msgs/PoseStamped        agent pose in the scene frame
  ~/agent_pose_cov       geometry_msgs/PoseWithCovarianceStamped
  ~/result               loc3r_interfaces/SituatedResult   latched (transient local)
  ~/status               loc3r_interfaces/Status
  ~/camera_path          nav_msgs/Path                    CUT3R keyframe trajectory (latched)
  ~/points               sensor_msgs/PointCloud2          downsampled reconstruction (latched)
  ~/markers              visualization_msgs/MarkerArray   agent, uncertainty, Q and A (latched)
  /tf_static             tf2_msgs/TFMessage               scene_frame -> agent_frame (latched)
  /tf                    tf2_msgs/TFMessage               scene_frame -> camera_frame (per keyframe)
Services:
  ~/ask                  loc3r_interfaces/srv/Ask
  ~/localize             loc3r_interfaces/srv/Localize
  ~/reset                std_srvs/srv/Trigger
Parameters: see loc3r_ros/params.py (one table, also in the README).

A managed (lifecycle) node: configure validates the parameters and loads the model bundle (in
its process); activate subscribes to the camera and the services answer; deactivate stops intake
(the services answer "inactive"; with release_model_on_deactivate the model is freed); cleanup
frees the model and the scene; shutdown ends the process. The scene memory survives
deactivate/activate. With autostart (the default) the node configures and activates itself.

The image callback only converts the image and hands it to the engine (a thumbnail comparison);
queries run in a separate callback group, so a running query never stalls image intake.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from loc3r_interfaces.msg import Confidence, SituatedResult, Status
from loc3r_interfaces.srv import Ask, Localize
from nav_msgs.msg import Path
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_policy_name_from_kind,
)
from rclpy.task import Future
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from loc3r.engine import EngineConfig, KeyframeConfig, QueryResult, SceneEngine
from loc3r.engine.alignment import AlignmentError, umeyama
from loc3r.engine.make_bundle import build_named
from loc3r.engine.model_fetch import FetchError
from loc3r.engine.model_process import ModelProcess, load_bundle_in_process
from loc3r.engine.models import ModelLoadError, load_bundle
from loc3r.errors import BusyError, Loc3rError
from loc3r_ros.camera_input import CameraInputHealth
from loc3r_ros.conversions import (
    agent_pose_to_msg,
    compressed_msg_preview,
    compressed_msg_to_rgb,
    confidence_to_msg,
    image_msg_to_rgb,
    stamp_from_ns,
    stamp_to_ns,
)
from loc3r_ros.lifecycle_support import (
    autostart,
    exit_after_shutdown,
    lifecycle_state,
    not_active_reply,
    timer_period,
)
from loc3r_ros.node_runner import run_node
from loc3r_ros.node_stats import LatencyWindow, RateWindow, resident_memory_bytes
from loc3r_ros.params import PARAMS, accept_parameters, validate
from loc3r_ros.tf_buffer import TfBuffer
from loc3r_ros.visualization import (
    agent_markers,
    camera_path,
    diagnostics,
    point_cloud,
    pose_from_matrix,
)

GIL_SWITCH_INTERVAL_S = 0.0005

LATCHED = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    reliability=ReliabilityPolicy.RELIABLE,
)


class Loc3rNode(LifecycleNode):
    """ROS 2 front end of the scene engine (a managed node)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("loc3r", **kwargs)
        for spec in PARAMS:
            descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.p = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        self._param_errors = [r for name, value in self.p.items() if (r := validate(name, value))]
        if self._param_errors and self.p["autostart"] is not False:  # a plain node's start-up
            raise ValueError("invalid parameters: " + "; ".join(self._param_errors))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.engine: SceneEngine | None = None  # made by configure, freed by cleanup
        self.model_state = Status.STATE_NO_MODEL
        self._not_configured = "not configured yet"  # why there is no engine (status, replies)
        self._model_process: ModelProcess | None = None
        self._last_viz_key: tuple | None = None
        self._loader: threading.Thread | None = None
        self._background_load = bool(self.p["autostart"])  # autostart's first configure only
        self._active = False
        self._model_released = False
        self._inputs: list = []  # the subscriptions activate makes
        self.frames_received = 0
        self.frames_dropped = 0
        self.last_latency_s = 0.0
        self.latency_sum_s = 0.0
        self.queries_answered = 0
        self._pending = 0
        self.input_rate = RateWindow(window_s=5.0)
        self.camera_input = CameraInputHealth(self.p["image_topic"])
        self._camera_problem = ""  # the kind of the last camera-input problem said in the log
        self.image_cb_latency = LatencyWindow(size=2000)
        self._pending_lock = threading.Lock()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loc3r-model")

        self.pose_pub = self.create_publisher(PoseStamped, "~/agent_pose", 10)
        self.pose_cov_pub = self.create_publisher(PoseWithCovarianceStamped, "~/agent_pose_cov", 10)
        self.result_pub = self.create_publisher(SituatedResult, "~/result", LATCHED)
        self.status_pub = self.create_publisher(Status, "~/status", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", LATCHED)
        self._static_tfs: dict[str, TransformStamped] = {}
        self._static_lock = threading.Lock()
        self.path_pub = self.create_publisher(Path, "~/camera_path", LATCHED)
        self.cloud_pub = self.create_publisher(PointCloud2, "~/points", LATCHED)
        self.markers_pub = self.create_publisher(MarkerArray, "~/markers", LATCHED)
        self._last_viz_stamp = -1
        self._camera_frame_id = ""
        self.anchor_rms = float("nan")
        self.tf_buffer = TfBuffer(cache_s=120.0)
        self._gravity_source = "unknown (no reconstruction yet)"
        self.camera_info = "none"
        self._camera_info_rejected: tuple | None = None  # the last invalid calibration, said once
        query_group = ReentrantCallbackGroup()
        self.ask_srv = self.create_service(Ask, "~/ask", self.ask_cb, callback_group=query_group)
        self.localize_srv = self.create_service(
            Localize, "~/localize", self.localize_cb, callback_group=query_group
        )
        self.reset_srv = self.create_service(
            Trigger, "~/reset", self.reset_cb, callback_group=query_group
        )
        # status runs in every state (it shows the lifecycle state); bad periods wait for configure
        self.status_timer = self.create_timer(
            self._period("status_period_s"), self.status_cb, MutuallyExclusiveCallbackGroup()
        )
        self.viz_timer = self.create_timer(
            self._period("viz_period_s"), self.viz_cb, MutuallyExclusiveCallbackGroup()
        )
        if self.p["autostart"]:
            autostart(self)
        else:
            name = self.get_fully_qualified_name()
            self.get_logger().info(f"unconfigured: ros2 lifecycle set {name} configure|activate")

    def _period(self, name: str) -> float:
        """A timer period parameter, or 1 s while it is invalid (configure reports it)."""
        return timer_period(self.p[name], validate(name, self.p[name]))

    # --- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters and load the model (autostart: in the background)."""
        if self._param_errors:
            self._not_configured = "invalid parameters: " + "; ".join(self._param_errors)
            self.get_logger().error(f"configure failed: {self._not_configured}")
            return TransitionCallbackReturn.FAILURE
        self.engine = SceneEngine(self._engine_config(), model=None)
        self.model_state = Status.STATE_LOADING
        self.engine.no_model_reason = "model is loading"
        if self._background_load:  # as a plain node did: serve and buffer while it loads
            self._background_load = False
            self._loader = threading.Thread(
                target=self._load_models, name="loc3r-load", daemon=True
            )
            self._loader.start()
            return TransitionCallbackReturn.SUCCESS
        self._load_models()
        if self.model_state != Status.STATE_READY:
            self._not_configured = f"configure failed: {self.engine.no_model_reason}"
            self.get_logger().error(f"{self._not_configured} (the node stays unconfigured)")
            self._free_engine()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model again if deactivate released it; subscribe; answer."""
        if self._model_released:
            self._load_models()
            if self.model_state != Status.STATE_READY:
                self.get_logger().error(f"activate failed: {self.engine.no_model_reason}")
                return TransitionCallbackReturn.FAILURE
            self._model_released = False
        self._subscribe()
        self._active = True
        self.get_logger().info(f"active: listening on {self.p['image_topic']}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop intake and answering; free the model when release_model_on_deactivate."""
        self._active = False
        self._unsubscribe()
        if self.p["release_model_on_deactivate"]:
            self._release_model("model released on deactivate (activate loads it again)")
            self._model_released = True
        self.get_logger().info("inactive: intake stopped, the scene is kept")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the scene."""
        self._shut_down_io()
        self._not_configured = "cleaned up (configure loads the model again)"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything; the process exits once the transition has been answered."""
        self._shut_down_io()
        self._not_configured = "shut down"
        exit_after_shutdown(self)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: free everything and go back to unconfigured."""
        self._shut_down_io()
        self._not_configured = "recovered from an error (configure again)"
        return TransitionCallbackReturn.SUCCESS

    def _shut_down_io(self) -> None:
        self._active = False
        self._unsubscribe()
        self._release_model("no model")
        self._model_released = False
        self._free_engine()

    def _free_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None
        self.model_state = Status.STATE_NO_MODEL

    def _release_model(self, reason: str) -> None:
        """Detach and free the model (its process exits; CUDA's cache is emptied)."""
        if self._loader is not None and self._loader.is_alive():
            self._loader.join()
        process, self._model_process = self._model_process, None
        if self.engine is not None:
            self.engine.set_models(None, None, None)
            self.engine.no_model_reason = reason
        if process is not None:
            process.close()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.model_state = Status.STATE_NO_MODEL

    def _subscribe(self) -> None:
        """The camera (and TF) subscriptions of the active state."""
        if self.p["parent_frame"]:
            tf_group = MutuallyExclusiveCallbackGroup()
            tf_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            for topic, qos, static in (("/tf", tf_qos, False), ("/tf_static", LATCHED, True)):
                add = partial(self.tf_buffer.add_message, static=static)
                subscription = self.create_subscription(
                    TFMessage, topic, add, qos, callback_group=tf_group
                )
                self._inputs.append(subscription)

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
        watch = self.camera_input = CameraInputHealth(self.p["image_topic"])
        watch.start(time.monotonic())
        events = SubscriptionEventCallbacks(  # losses and QoS mismatches, where DDS reports them
            message_lost=lambda info: watch.lost(time.monotonic(), info.total_count_change),
            incompatible_qos=lambda info: watch.incompatible_qos(
                qos_policy_name_from_kind(info.last_policy_kind)
            ),
            use_default_callbacks=False,
        )
        kind, callback = (
            (CompressedImage, self.compressed_cb)
            if self.p["image_compressed"]
            else (Image, self.image_cb)
        )
        self._inputs.append(
            self.create_subscription(
                kind,
                self.p["image_topic"],
                callback,
                image_qos,
                callback_group=image_group,
                event_callbacks=events,
            )
        )

        if self.p["camera_info_topic"]:
            self._inputs.append(
                self.create_subscription(
                    CameraInfo,
                    self.p["camera_info_topic"],
                    self.camera_info_cb,
                    image_qos,
                    # its own group: a new calibration may wait for a query (set_intrinsics)
                    callback_group=MutuallyExclusiveCallbackGroup(),
                )
            )

    def _unsubscribe(self) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs.clear()

    # --- configuration -------------------------------------------------------------------------
    def _engine_config(self) -> EngineConfig:
        return EngineConfig(
            keyframes=KeyframeConfig(
                min_interval_s=self.p["keyframe_min_interval_s"],
                max_interval_s=self.p["keyframe_max_interval_s"],
                min_change=self.p["keyframe_min_change"],
                duplicate_change=self.p["keyframe_duplicate_change"],
                capacity=self.p["keyframe_capacity"],
                max_side=self.p["keyframe_max_side"],
            ),
            max_text_chars=self.p["max_text_chars"],
            query_timeout_s=self.p["query_timeout_s"],
            mode=self.p["engine_mode"],
        )

    def _load_models(self) -> None:
        """Load CUT3R + Loc3R-VLM in the background; the node serves (and buffers) meanwhile."""
        model_dir = self.p["model_dir"]
        try:
            if self.p["model"]:  # by name: fetched and built on first use (downloads log here)
                self.get_logger().info(f"model {self.p['model']}: fetching or reusing its bundle")
                model_dir = str(build_named(self.p["model"]))
            if self.p["model_process"]:
                bundle, self._model_process = load_bundle_in_process(
                    model_dir or None,
                    self.p["device"],
                    self.p["model_threads"],
                    self.p["model_niceness"],
                    self.p["decoding"],
                )
            else:
                bundle = load_bundle(model_dir or None, self.p["device"], self.p["decoding"])
        except (ModelLoadError, FetchError) as exc:
            self.model_state = Status.STATE_NO_MODEL
            self.engine.no_model_reason = f"no model loaded: {exc}"
            self.get_logger().error(self.engine.no_model_reason)
            return
        except Exception as exc:  # never let a loader bug kill the node
            self.model_state = Status.STATE_ERROR
            self.engine.no_model_reason = f"no model loaded: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.engine.no_model_reason)
            return
        frames = self.p["num_query_frames"] or bundle.num_query_frames
        self.engine.set_models(bundle.model, bundle.perception, frames, bundle.geometry)
        self.model_state = Status.STATE_READY
        self.get_logger().info(f"model ready: {bundle.description} ({frames} frames per query)")

    def _on_set_parameters(self, params) -> SetParametersResult:
        reason = accept_parameters(params, self.p, validate)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if self.engine is not None:
            self.engine.config.max_text_chars = self.p["max_text_chars"]
            self.engine.config.query_timeout_s = self.p["query_timeout_s"]
        return SetParametersResult(successful=True)

    # --- camera --------------------------------------------------------------------------------
    def image_cb(self, msg: Image) -> None:
        """Hand a raw image to the engine; malformed images are counted and dropped."""
        self._camera_frame_id = msg.header.frame_id
        self._ingest(msg.header.stamp, lambda: image_msg_to_rgb(msg))

    def compressed_cb(self, msg: CompressedImage) -> None:
        """Hand a compressed image to the engine, decoded lazily.

        A 1/4-size decode (cheap for JPEG) decides whether the frame is a keyframe; only
        keyframes are decoded at full size.
        """
        self._camera_frame_id = msg.header.frame_id
        self._ingest(
            msg.header.stamp,
            lambda: compressed_msg_preview(msg),
            lambda: compressed_msg_to_rgb(msg),
        )

    def camera_info_cb(self, msg: CameraInfo) -> None:
        """The camera's intrinsics: in diagnostics, and for the geometric pose source.

        That source otherwise reads the focal length off CUT3R's pointmap. A new calibration
        restarts the scene's perception from its keyframes (SceneEngine.set_intrinsics); this
        callback has a group of its own, so that wait never holds up the images. A CameraInfo
        the pose source cannot use (an uncalibrated camera's zeros, a region of interest,
        binning) is said once.
        """
        k = msg.k
        self.camera_info = (
            f"{msg.width}x{msg.height} fx={k[0]:.1f} fy={k[4]:.1f} cx={k[2]:.1f} cy={k[5]:.1f}"
        )
        calibration = (
            (float(k[0]), float(k[4]), float(k[2]), float(k[5])),
            (int(msg.height), int(msg.width)),
        )
        engine = self.engine
        if engine is None or engine.intrinsics == calibration:
            return
        topic = self.p["camera_info_topic"]
        try:
            roi = msg.roi
            if roi.width and (roi.width, roi.height) != (msg.width, msg.height):
                raise ValueError(f"a region of interest ({roi.width}x{roi.height}) is not used")
            if max(msg.binning_x, msg.binning_y) > 1:
                raise ValueError("binned images are not used")
            changed = engine.set_intrinsics(*calibration)
        except (ValueError, Loc3rError) as exc:
            if calibration != self._camera_info_rejected:
                self._camera_info_rejected = calibration
                self.get_logger().warning(f"camera info on {topic} not used: {exc}")
            return
        self._camera_info_rejected = None
        if changed:
            self.get_logger().info(
                f"camera intrinsics from {topic} ({self.camera_info}): the geometric pose source "
                "uses them (the scene's perception restarts from its keyframes)"
            )

    def _ingest(self, stamp, decode, full=None) -> None:
        start = time.perf_counter()
        engine = self.engine
        if engine is None or not self._active:  # a message that raced deactivate
            return
        self.frames_received += 1
        self.input_rate.tick()
        self.camera_input.frame(time.monotonic())
        try:
            engine.add_frame(decode(), stamp_to_ns(stamp), full)
        except Loc3rError as exc:
            self.frames_dropped += 1
            self.get_logger().warning(f"dropped image: {exc}", throttle_duration_sec=5.0)
        self.image_cb_latency.record(time.perf_counter() - start)

    # --- services ------------------------------------------------------------------------------
    async def ask_cb(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        """Answer a question, optionally from a described situation."""
        question, situation = request.question, request.situation
        engine = self.engine
        return await self._serve(
            response, lambda: engine.ask(question, situation), situation, question
        )

    async def localize_cb(
        self, request: Localize.Request, response: Localize.Response
    ) -> Localize.Response:
        """Localize the agent described by a situation."""
        situation = request.situation
        engine = self.engine
        return await self._serve(response, lambda: engine.localize(situation), situation, "")

    async def _serve(self, response, query, situation: str, question: str):
        """Run `query` on the model thread; the executor thread is free while it runs."""
        start = time.perf_counter()
        response.success = False
        if not self._active or self.engine is None:
            response.message = not_active_reply(self, self._not_active_detail())
            response.latency_s = time.perf_counter() - start
            return response
        outcome = await self._submit(query)
        camera = self._camera_diagnosis()
        if isinstance(outcome, Loc3rError):
            response.message = str(outcome) + (f" (camera input: {camera})" if camera else "")
        elif isinstance(outcome, Exception):  # a model failure must not take the node down
            self.get_logger().error(f"query failed: {outcome!r}")
            response.message = f"internal error: {type(outcome).__name__}: {outcome}"
        else:
            response.success = True
            response.message = f"ok (warning: camera input: {camera})" if camera else "ok"
            if hasattr(response, "answer"):
                response.answer = outcome.answer
            self._fill_query_fields(response, outcome)
            self._publish_result(situation, question, outcome)
        response.latency_s = time.perf_counter() - start
        return response

    def _submit(self, query) -> Future:
        """Queue `query` for the model thread; a Future of its result or exception.

        Beyond max_pending_queries waiting queries the reply is an immediate "busy"; a query that
        waited longer than query_timeout_s before its turn is answered "busy" without running.
        """
        future = Future(executor=self.executor)
        # A done callback makes set_result (from the model thread) schedule a task on the
        # executor, which wakes it: without one, the awaiting service coroutine would resume
        # only at the executor's next wake-up (the next timer tick).
        future.add_done_callback(lambda _: None)
        with self._pending_lock:
            if self._pending >= self.p["max_pending_queries"]:
                future.set_result(BusyError(f"busy: {self._pending} queries are waiting"))
                return future
            self._pending += 1
        submitted = time.monotonic()

        def work() -> None:
            waited = time.monotonic() - submitted
            try:
                if waited > self.p["query_timeout_s"]:
                    outcome = BusyError(f"busy: waited {waited:.1f} s for the model")
                else:
                    outcome = query()
            except Exception as exc:
                outcome = exc
            finally:
                with self._pending_lock:
                    self._pending -= 1
            future.set_result(outcome)

        self._model_thread.submit(work)
        return future

    def reset_cb(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Forget the scene (active or inactive)."""
        if self.engine is None:
            response.success = False
            response.message = not_active_reply(self, self._not_active_detail())
            return response
        self.engine.reset()
        self._last_viz_key = None
        response.success, response.message = True, "scene reset"
        return response

    def _not_active_detail(self) -> str:
        """Why the node is not serving: the last configure failure, or the model state."""
        if self.engine is None:
            return self._not_configured
        return "" if self.engine.ready else self.engine.no_model_reason

    def _fill_query_fields(self, response, result: QueryResult) -> None:
        response.num_frames = result.num_frames
        response.first_frame_stamp = stamp_from_ns(result.first_stamp_ns, Time)
        response.last_frame_stamp = stamp_from_ns(result.last_stamp_ns, Time)
        self.last_latency_s = result.latency_s
        self.latency_sum_s += result.latency_s
        self.queries_answered += 1
        response.confidence = confidence_to_msg(result.confidence, Confidence)
        if result.confidence.note:
            self.get_logger().warning(result.confidence.note, throttle_duration_sec=30.0)
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
        msg.confidence = confidence_to_msg(result.confidence, Confidence)
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
            self._publish_static_tf(tf)
            self.markers_pub.publish(
                agent_markers(msg.header, result.pose, question, result.answer)
            )
        self.result_pub.publish(msg)

    def _publish_static_tf(self, transform: TransformStamped) -> None:
        """Latch a transform on /tf_static: late listeners get it, no TF_REPEATED_DATA.

        The agent pose holds until the next query, so it is static in the TF sense; every
        message carries the whole set (transient-local keeps only the last message).
        """
        with self._static_lock:
            self._static_tfs[transform.child_frame_id] = transform
            self.tf_static_pub.publish(TFMessage(transforms=list(self._static_tfs.values())))

    # --- visualisation -------------------------------------------------------------------------
    def viz_cb(self) -> None:
        """Publish the camera trajectory (Path, TF) and the reconstruction (PointCloud2)."""
        engine = self.engine
        if engine is None or not self._active:
            return
        frames = engine.processed_keyframes()  # a cheap check before the heavy view
        key = (len(frames), frames[0].index, frames[-1].index) if frames else None
        if key is None or key == self._last_viz_key:
            return
        self._last_viz_key = key
        try:
            view = engine.scene_view(
                voxel=self.p["cloud_voxel_m"], max_points=self.p["cloud_max_points"]
            )
        except Exception as exc:
            self.get_logger().error(f"scene view failed: {exc!r}", throttle_duration_sec=10.0)
            return
        if view is None or view.stamps_ns[-1] == self._last_viz_stamp:
            return
        self._last_viz_stamp = view.stamps_ns[-1]
        self._gravity_source = f"{view.frame.source}: {view.frame.detail}"
        stamps = [stamp_from_ns(ns, Time) for ns in view.stamps_ns]
        header = Header(stamp=stamps[-1], frame_id=self.p["scene_frame"])
        self.path_pub.publish(camera_path(header, view.camera_poses, stamps))
        self.cloud_pub.publish(point_cloud(header, view.points, view.colors))
        tf = TransformStamped(header=header, child_frame_id=self.p["camera_frame"])
        pose = pose_from_matrix(view.camera_poses[-1])
        tf.transform.translation.x = pose.position.x
        tf.transform.translation.y = pose.position.y
        tf.transform.translation.z = pose.position.z
        tf.transform.rotation = pose.orientation
        self.tf_pub.publish(TFMessage(transforms=[tf]))
        if self.p["parent_frame"] and self._camera_frame_id:
            self._anchor(view, header)

    def _anchor(self, view, header: Header) -> None:
        """Align the CUT3R camera path to the TF camera path; publish parent -> scene frame.

        Gravity from TF (the parent's z axis, seen from the first keyframe's camera) also feeds
        the engine's scene frame. Keyframes without TF at their stamp are left out.
        """
        parent, camera = self.p["parent_frame"], self._camera_frame_id
        scene_centres, tf_centres = [], []
        first_rotation = None
        for pose, stamp_ns in zip(view.camera_poses, view.stamps_ns, strict=True):
            try:
                t_parent_camera = self.tf_buffer.lookup(parent, camera, stamp_ns)
            except LookupError:
                continue
            if first_rotation is None and stamp_ns == view.stamps_ns[0]:
                first_rotation = t_parent_camera[:3, :3]
            scene_centres.append(pose[:3, 3])
            tf_centres.append(t_parent_camera[:3, 3])
        if first_rotation is not None and self.engine is not None:  # up = parent's +z
            self.engine.set_gravity(first_rotation.T @ np.array([0.0, 0.0, 1.0]))
        if len(scene_centres) < 3:
            return
        try:
            fit = umeyama(np.array(scene_centres), np.array(tf_centres), with_scale=False)
        except AlignmentError as exc:
            self.get_logger().warning(f"anchoring skipped: {exc}", throttle_duration_sec=10.0)
            return
        self.anchor_rms = fit.rms
        anchor = TransformStamped(
            header=Header(stamp=header.stamp, frame_id=parent),
            child_frame_id=self.p["scene_frame"],
        )
        q = Rotation.from_matrix(fit.rotation).as_quat()
        (
            anchor.transform.translation.x,
            anchor.transform.translation.y,
            anchor.transform.translation.z,
        ) = (float(v) for v in fit.translation)
        anchor.transform.rotation.x, anchor.transform.rotation.y = float(q[0]), float(q[1])
        anchor.transform.rotation.z, anchor.transform.rotation.w = float(q[2]), float(q[3])
        self._publish_static_tf(anchor)

    # --- status --------------------------------------------------------------------------------
    def status_cb(self) -> None:
        """Publish ~/status and /diagnostics (a failure here is logged, never fatal)."""
        try:
            self._publish_status()
        except Exception as exc:
            self.get_logger().error(f"status failed: {exc!r}", throttle_duration_sec=10.0)

    def _check_model_process(self) -> None:
        """A model process that died turns the node's model state to error (said once)."""
        process, engine = self._model_process, self.engine
        if process is not None and not process.alive and self.model_state != Status.STATE_ERROR:
            self.model_state = Status.STATE_ERROR
            reason = f"the model process exited (code {process.process.exitcode})"
            if engine is not None:
                engine.no_model_reason = reason
            self.get_logger().error(reason)

    def _camera_diagnosis(self) -> str:
        """The camera input problem while active ("" for none); logged when it changes."""
        problem, kind = "", ""
        if self._active:
            self.camera_input.set_publishers(self.count_publishers(self.p["image_topic"]))
            problem = self.camera_input.diagnosis(time.monotonic())
            kind = self.camera_input.kind
        if kind != self._camera_problem:  # said once per change of situation, not per tick
            if kind:
                self.get_logger().warning(f"camera input: {problem}")
            elif self._active:
                self.get_logger().info("camera input: frames arrive again")
            self._camera_problem = kind
        return problem

    def _publish_status(self) -> None:
        self._check_model_process()
        camera = self._camera_diagnosis()
        engine = self.engine
        msg = Status()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.lifecycle_state = lifecycle_state(self)
        ready = engine is not None and engine.ready and self.model_state != Status.STATE_ERROR
        msg.state = self.model_state
        if engine is None:
            msg.message = self._not_configured
        elif not ready:
            msg.message = engine.no_model_reason
        else:
            msg.message = "ready" if self._active else "ready (inactive: activate to serve)"
        msg.frames_received = self.frames_received
        msg.frames_dropped = self.frames_dropped
        msg.keyframes = len(engine.buffer) if engine is not None else 0
        msg.input_rate_hz = self.input_rate.rate()
        msg.image_callback_p99_ms = 1000.0 * self.image_cb_latency.percentile(99)
        if self.queries_answered:
            msg.last_query_latency_s = self.last_latency_s
            msg.mean_query_latency_s = self.latency_sum_s / self.queries_answered
        msg.memory_bytes = resident_memory_bytes()
        if self._model_process is not None:
            msg.memory_bytes += resident_memory_bytes(self._model_process.process.pid)
        worker = engine.worker if engine is not None else None
        if worker is not None:
            msg.cut3r_ms_per_frame = 1000.0 * worker.mean_seconds()
        self.status_pub.publish(msg)
        if self.model_state == Status.STATE_ERROR:
            level = DiagnosticStatus.ERROR
        elif ready and self._active and not camera:
            level = DiagnosticStatus.OK
        else:
            level = DiagnosticStatus.WARN
        values = {
            "state": msg.message,
            "lifecycle": msg.lifecycle_state,
            "input_rate_hz": f"{msg.input_rate_hz:.1f}",
            "frames_received": msg.frames_received,
            "frames_dropped": msg.frames_dropped,
            "keyframes": msg.keyframes,
            "duplicate_frames": engine.buffer.duplicates if engine is not None else 0,
            "pending_queries": self._pending,
            "image_callback_p99_ms": f"{msg.image_callback_p99_ms:.3f}",
            "last_query_latency_s": f"{msg.last_query_latency_s:.3f}",
            "mean_query_latency_s": f"{msg.mean_query_latency_s:.3f}",
            "memory_mb": f"{msg.memory_bytes / 2**20:.1f}",
            "cut3r_ms_per_frame": f"{msg.cut3r_ms_per_frame:.1f}",
            "cut3r_frames_failed": worker.failed if worker is not None else 0,
            "cut3r_frames_skipped": worker.skipped if worker is not None else 0,
            "gravity": self._gravity_source,
            "camera_info": self.camera_info,
            "anchor_rms_m": f"{self.anchor_rms:.3f}",
            "camera_input": camera or "ok",
            **self.camera_input.values(),
        }
        header = Header(stamp=msg.header.stamp)
        summary = f"{msg.message}; camera input: {camera}" if camera else msg.message
        self.diagnostics_pub.publish(
            diagnostics(header, self.get_fully_qualified_name(), level, summary, values)
        )

    def destroy_node(self) -> None:
        """Stop the model and perception threads, then the node."""
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        if self._model_process is not None:
            self._model_process.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run loc3r_node on a multi-threaded executor until shutdown."""
    # The model thread runs Python-heavy loops (token by token); with CPython's default 5 ms GIL
    # switch interval an image callback can wait that long. 0.5 ms bounds the wait.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    run_node(Loc3rNode, args)


if __name__ == "__main__":
    main()
