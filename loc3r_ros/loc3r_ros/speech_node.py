"""loc3r_speech: spoken questions in, spoken answers out (a bridge to loc3r_node's Ask service).

Subscriptions:
  <audio_topic>          loc3r_interfaces/AudioChunk   a continuous audio stream (default
                                                       audio/input); a streaming VAD cuts it
                                                       into utterances
Publications (under the node's name, default /loc3r_speech/...):
  ~/transcript           std_msgs/String               what the recogniser heard (per utterance)
  ~/answer               std_msgs/String               the answer text
  ~/answer_audio         loc3r_interfaces/AudioChunk   the answer, spoken (mono S16LE)
  /diagnostics           diagnostic_msgs/DiagnosticArray
Services:
  ~/ask_spoken           loc3r_interfaces/srv/AskSpoken   one utterance in, the full reply out
Client:
  <ask_service>          loc3r_interfaces/srv/Ask         (default /loc3r/ask)
Parameters: see loc3r_ros/speech_params.py.

Each utterance goes audio -> checks -> VAD -> ASR -> split into situation and question -> Ask ->
TTS. Audio that fails a check (silence, noise only, clipping, unsupported rate or format, odd
byte count) or holds no question is answered success=false and never reaches the Ask service.
ASR and TTS run in worker threads; the service callback is a coroutine that awaits them, so
the executor's threads stay free. Service calls and streamed utterances both publish on
~/transcript, ~/answer and ~/answer_audio; only streamed ones are played (play_answers).

A managed (lifecycle) node: configure validates the parameters and loads the recogniser and
synthesiser; activate subscribes to the audio (and opens the microphone); deactivate stops them
(~/ask_spoken answers "inactive"; with release_model_on_deactivate the recogniser is freed);
cleanup frees everything; shutdown ends the process. autostart (default) does configure and
activate at start.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from loc3r_interfaces.msg import AudioChunk
from loc3r_interfaces.srv import Ask, AskSpoken
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_msgs.msg import Header, String

from loc3r.speech.asr import AsrConfig, PocketSphinxConfig, WhisperConfig, make_recognizer
from loc3r.speech.audio import (
    ASR_RATE,
    SAMPLE_FORMATS,
    AudioClip,
    AudioConfig,
    clip_from_bytes,
    resample,
    validate_clip,
)
from loc3r.speech.errors import SpeechBackendError, SpeechInputError
from loc3r.speech.split import PARTICIPLES, split_utterance
from loc3r.speech.tts import EspeakConfig, PiperConfig, TtsConfig, make_synthesizer
from loc3r.speech.vad import SpeechSegment, StreamingVad, VadConfig, find_speech
from loc3r_ros.lifecycle_support import (
    autostart,
    exit_after_shutdown,
    lifecycle_state,
    not_active_reply,
    timer_period,
)
from loc3r_ros.node_runner import run_node
from loc3r_ros.params import accept_parameters
from loc3r_ros.speech_params import SPEECH_PARAMS, validate
from loc3r_ros.visualization import diagnostics

FORMATS = {AudioChunk.FORMAT_S16LE: "S16LE", AudioChunk.FORMAT_F32LE: "F32LE"}
MIC_RATE = 16000
MIC_BLOCK = 1600  # 100 ms chunks


def speakable(text: str) -> str:
    """`text` without control characters (model output may hold some; TTS rejects them)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def looks_like_situation(text: str) -> bool:
    """True when a transcript (without a question) describes the speaker: 'i am ...', 'facing'."""
    words = text.lower().replace("\u2019", "'").split()
    if not words:
        return False
    first_person = any(
        w in ("i'm", "im") or (w == "i" and n in ("am", "was"))
        for w, n in zip(words, [*words[1:], ""], strict=True)
    )
    return first_person or words[0] in PARTICIPLES


class SpeechNode(LifecycleNode):
    """ROS 2 speech bridge: VAD, ASR, situation/question split, Ask call, TTS."""

    def __init__(self, **kwargs) -> None:
        super().__init__("loc3r_speech", **kwargs)
        for spec in SPEECH_PARAMS:
            descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.p: dict[str, Any] = {s.name: self.get_parameter(s.name).value for s in SPEECH_PARAMS}
        self._param_errors = [r for name, value in self.p.items() if (r := validate(name, value))]
        if self._param_errors and self.p["autostart"] is not False:  # a plain node's start-up
            raise ValueError("invalid parameters: " + "; ".join(self._param_errors))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._asr = None
        self._tts = None
        self.asr_state = "unconfigured"  # unconfigured | loading | ready | error | released
        self._loader: threading.Thread | None = None
        self._background_load = bool(self.p["autostart"])  # autostart's first configure only
        self._active = False
        self._released = False
        self.audio_sub = None
        self.idle_timer = None
        self.asr_error = ""
        self.tts_error = ""
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._asr_latency_sum = 0.0
        self._last_asr_latency = 0.0
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loc3r-speech")
        self._carry: tuple[str, float] | None = None  # streamed situation waiting for a question

        self.vad_config = VadConfig(
            threshold_db=self.p["vad_threshold_db"],
            hangover_ms=self.p["vad_hangover_ms"],
            max_utterance_s=self.p["max_utterance_s"],
        )
        self.audio_config = AudioConfig(
            max_duration_s=self.p["max_utterance_s"],
            require_speech=False,  # the node runs the VAD itself (and trims to the speech)
            vad=self.vad_config,
        )
        self._vad: StreamingVad | None = None
        self._last_chunk = time.monotonic()

        self.transcript_pub = self.create_publisher(String, "~/transcript", 10)
        self.answer_pub = self.create_publisher(String, "~/answer", 10)
        self.answer_audio_pub = self.create_publisher(AudioChunk, "~/answer_audio", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        query_group = ReentrantCallbackGroup()
        self.ask_client = self.create_client(Ask, self.p["ask_service"], callback_group=query_group)
        self.ask_spoken_srv = self.create_service(
            AskSpoken, "~/ask_spoken", self.ask_spoken_cb, callback_group=query_group
        )
        audio_group = MutuallyExclusiveCallbackGroup()  # the VAD is fed by one thread at a time
        self.audio_qos = QoSProfile(
            depth=100,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE
            if self.p["audio_qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
        )
        self._audio_group = audio_group
        value = self.p["status_period_s"]
        period = timer_period(value, validate("status_period_s", value))
        self.status_timer = self.create_timer(
            period, self.status_cb, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._sounddevice = None
        self._microphone = None
        self._microphone_pub = None
        if self.p["autostart"]:
            autostart(self)

    # --- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters; load the recogniser (autostart: in the background)."""
        if self._param_errors:
            self.asr_state, self.asr_error = "error", "invalid parameters: " + "; ".join(
                self._param_errors)  # fmt: skip
            self.get_logger().error(f"configure failed: {self.asr_error}")
            return TransitionCallbackReturn.FAILURE
        if self.p["use_microphone"] or self.p["play_answers"]:
            self._sounddevice = self._import_sounddevice()
        self.asr_state, self.asr_error, self.tts_error = "loading", "", ""
        if self._background_load:
            self._background_load = False
            self._loader = threading.Thread(
                target=self._load, name="loc3r-speech-load", daemon=True
            )
            self._loader.start()
            return TransitionCallbackReturn.SUCCESS
        self._load()
        if self.asr_state != "ready":
            self.get_logger().error(f"configure failed: {self.asr_error}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load again what deactivate released; subscribe to the audio; answer."""
        if self._released:
            self._load()
            if self.asr_state != "ready":
                self.get_logger().error(f"activate failed: {self.asr_error}")
                return TransitionCallbackReturn.FAILURE
            self._released = False
        self.audio_sub = self.create_subscription(
            AudioChunk, self.p["audio_topic"], self.audio_cb, self.audio_qos,
            callback_group=self._audio_group,
        )  # fmt: skip
        self.idle_timer = self.create_timer(0.1, self.idle_cb, callback_group=self._audio_group)
        if self.p["use_microphone"] and self._sounddevice is not None:
            self._microphone = self._start_microphone()
        self._active = True
        self.get_logger().info(
            f"listening on {self.audio_sub.topic_name}; questions go to {self.p['ask_service']}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop listening; free the recogniser when release_model_on_deactivate."""
        self._stop_listening()
        if self.p["release_model_on_deactivate"]:
            self._free_backends("released on deactivate (activate loads it again)")
            self._released = True
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the recogniser and the synthesiser."""
        self._unconfigure("cleaned up (configure loads it again)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything; the process exits once the transition has been answered."""
        self._stop_listening()
        self._free_backends("shut down")
        exit_after_shutdown(self)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: free everything and go back to unconfigured."""
        self._unconfigure("recovered from an error (configure again)")
        return TransitionCallbackReturn.SUCCESS

    def _unconfigure(self, reason: str) -> None:
        self._stop_listening()
        self._free_backends(reason)
        self.asr_state, self._released = "unconfigured", False

    def _stop_listening(self) -> None:
        self._active = False
        if self._microphone is not None:
            self._microphone.close()
            self._microphone = None
        if self._microphone_pub is not None:
            self.destroy_publisher(self._microphone_pub)
            self._microphone_pub = None
        if self.audio_sub is not None:
            self.destroy_subscription(self.audio_sub)
            self.audio_sub = None
        if self.idle_timer is not None:
            self.destroy_timer(self.idle_timer)
            self.idle_timer = None
        self._vad = None

    def _free_backends(self, reason: str) -> None:
        if self._loader is not None and self._loader.is_alive():
            self._loader.join()
        self._asr = self._tts = None
        self.asr_state, self.asr_error = "released", f"speech recogniser {reason}"
        gc.collect()

    # --- configuration -------------------------------------------------------------------------
    def _load(self) -> None:
        """Build the recogniser (the domain LM takes a few seconds) and the synthesiser."""
        p = self.p
        try:
            self._tts = make_synthesizer(
                TtsConfig(
                    backend=p["tts_backend"],
                    espeak=EspeakConfig(
                        voice=p["voice"], speed_wpm=p["speed"], timeout_s=p["tts_timeout_s"]
                    ),
                    piper=PiperConfig(model_path=p["piper_model"], timeout_s=p["tts_timeout_s"]),
                )
            )
        except (SpeechBackendError, ValueError) as exc:
            self.tts_error = str(exc)
            self.get_logger().error(f"speech synthesis unavailable (answers stay text): {exc}")
        try:
            self._asr = make_recognizer(
                AsrConfig(
                    backend=p["asr_backend"],
                    pocketsphinx=PocketSphinxConfig(),
                    whisper=WhisperConfig(
                        model_dir=p["whisper_model_dir"], device=p["whisper_device"]
                    ),
                )
            )
        except Exception as exc:  # a backend that fails to load must not take the node down
            self._asr = None
            self.asr_error = f"speech recognition unavailable: {exc}"
            self.asr_state = "error"
            self.get_logger().error(self.asr_error)
            return
        self.asr_state = "ready"
        self.get_logger().info(f"speech recogniser ready ({p['asr_backend']})")

    def _on_set_parameters(self, params) -> SetParametersResult:
        reason = accept_parameters(params, self.p, validate)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _reserve(self) -> bool:
        """Take a slot for one spoken request; False (busy) when max_pending are in progress."""
        with self._pending_lock:
            if self._pending >= self.p["max_pending"]:
                return False
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _future(self) -> Future:
        """A Future completed from another thread that wakes the executor when it is done.

        rclpy re-runs a waiting coroutine only when the executor wakes up; a done callback makes
        set_result queue a task, which wakes it at once.
        """
        future = Future(executor=self.executor)
        future.add_done_callback(lambda _: None)
        return future

    def _in_worker(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` in a worker thread; a Future of its result, or of the exception it raised."""
        future = self._future()

        def work() -> None:
            try:
                outcome = fn()
            except Exception as exc:
                outcome = exc
            future.set_result(outcome)

        self._workers.submit(work)
        return future

    async def _await_worker(self, fn: Callable[[], Any]) -> Any:
        outcome = await self._in_worker(fn)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    # --- audio preparation (worker threads) ----------------------------------------------------
    def _prepare_request_audio(self, data, code: int, channels: int, rate: int) -> AudioClip:
        """A request's raw audio -> validated, speech-trimmed mono clip at 16 kHz."""
        if code not in FORMATS:
            names = ", ".join(f"{k} = {v}" for k, v in FORMATS.items())
            raise SpeechInputError(f"unsupported sample_format {code} (use {names})")
        name = FORMATS[code]
        width = SAMPLE_FORMATS[name][1]
        max_s = self.audio_config.max_duration_s
        if channels >= 1 and rate > 0 and len(data) > (max_s + 1.0) * rate * channels * width:
            seconds = len(data) / (rate * channels * width)
            raise SpeechInputError(f"audio too long: {seconds:.1f} s (at most {max_s:.1f} s)")
        clip = clip_from_bytes(bytes(data), name, channels, rate)
        validate_clip(clip, self.audio_config)
        segments = find_speech(clip.samples, clip.sample_rate, self.vad_config)
        if not segments:
            raise SpeechInputError("no speech found in the audio (only noise or background sound)")
        speech = clip.samples[segments[0].start : segments[-1].end]
        return resample(AudioClip(speech, clip.sample_rate), ASR_RATE)

    def _prepare_segment(self, segment: SpeechSegment) -> AudioClip:
        """A streamed utterance -> validated mono clip at 16 kHz."""
        clip = AudioClip(segment.samples, segment.sample_rate)
        validate_clip(clip, self.audio_config)
        return resample(clip, ASR_RATE)

    def _hear(self, prepare: Callable[[], AudioClip]) -> str:
        """Prepare the audio and recognise it (worker thread); the transcript text."""
        clip = prepare()
        recognizer = self._asr
        if recognizer is None:
            raise SpeechBackendError(
                self.asr_error if self.asr_state == "error" else "speech recogniser is loading"
            )
        start = time.perf_counter()
        text = recognizer.transcribe(clip).text
        latency = time.perf_counter() - start
        with self._stats_lock:
            self.stats["asr_runs"] += 1
            self._asr_latency_sum += latency
            self._last_asr_latency = latency
        return text

    # --- the pipeline --------------------------------------------------------------------------
    async def _pipeline(self, prepare, response: AskSpoken.Response, streamed: bool) -> None:
        """Audio -> transcript -> (situation, question) -> Ask -> answer (+ audio) in `response`."""
        response.success = False
        try:
            heard = await self._await_worker(lambda: self._hear(prepare))
            response.transcript = heard
            self.transcript_pub.publish(String(data=heard))
            if not heard.strip():
                raise SpeechInputError("no words recognised in the speech")
            text = self._with_carry(heard) if streamed else heard
            try:
                parts = split_utterance(text)
            except SpeechInputError:
                if streamed and self.p["situation_carry_s"] > 0 and looks_like_situation(text):
                    self._carry = (text, time.monotonic())
                raise
            response.situation, response.question = parts.situation, parts.question
            reply = await self._ask(parts.question, parts.situation)
        except SpeechInputError as exc:
            self._count("rejected")
            response.message = str(exc)
            return
        except SpeechBackendError as exc:
            self._count("failed")
            response.message = str(exc)
            return
        if not reply.success:
            self._count("failed")
            response.message = f"{self.p['ask_service']}: {reply.message}"
            return
        response.answer = reply.answer
        response.has_pose, response.pose = reply.has_pose, reply.pose
        response.confidence = reply.confidence
        self.answer_pub.publish(String(data=reply.answer))
        response.success, response.message = True, "ok"
        self._count("answered")
        spoken = speakable(reply.answer)
        if self._tts is None or not spoken:
            why = self.tts_error or "the answer has nothing to speak"
            response.message = f"ok (no spoken answer: {why})"
            return
        try:
            clip = await self._await_worker(lambda: self._tts.synthesize(spoken))
        except (SpeechInputError, SpeechBackendError) as exc:
            self._count("tts_failed")
            response.message = f"ok (no spoken answer: {exc})"
            self.get_logger().warning(f"speech synthesis failed: {exc}", throttle_duration_sec=10)
            return
        chunk = AudioChunk(
            sample_rate=clip.sample_rate, channels=1, sample_format=AudioChunk.FORMAT_S16LE
        )
        chunk.header.stamp = self.get_clock().now().to_msg()
        chunk.data = clip.to_pcm16()
        response.answer_audio = chunk
        self.answer_audio_pub.publish(chunk)
        if streamed and self.p["play_answers"] and self._sounddevice is not None:
            self._workers.submit(self._play, clip)

    def _with_carry(self, heard: str) -> str:
        """Prepend a recent streamed situation that came without a question (a sentence pause)."""
        carry, self._carry = self._carry, None
        if carry is None or time.monotonic() - carry[1] > self.p["situation_carry_s"]:
            return heard
        return f"{carry[0]}. {heard}"

    async def _ask(self, question: str, situation: str) -> Ask.Response:
        """Call the Ask service; a failed Ask.Response when it is missing or does not reply."""
        service = self.p["ask_service"]
        if not self.ask_client.service_is_ready():
            return Ask.Response(
                success=False, message="service not available (is loc3r_node running?)"
            )
        self._count("ask_calls")
        call = self.ask_client.call_async(Ask.Request(question=question, situation=situation))
        done = self._future()
        lock = threading.Lock()

        def finish(value) -> None:
            with lock:
                if not done.done():
                    done.set_result(value)

        def on_reply(future: Future) -> None:
            try:
                finish(future.result())
            except Exception as exc:
                finish(Ask.Response(success=False, message=f"call failed: {exc}"))

        call.add_done_callback(on_reply)
        timeout = self.p["ask_timeout_s"]
        timer = threading.Timer(timeout, finish, args=(None,))
        timer.daemon = True
        timer.start()
        try:
            reply = await done
        finally:
            timer.cancel()
        if reply is None:
            self.ask_client.remove_pending_request(call)
            return Ask.Response(success=False, message=f"no reply from {service} in {timeout} s")
        return reply

    # --- service -------------------------------------------------------------------------------
    async def ask_spoken_cb(
        self, request: AskSpoken.Request, response: AskSpoken.Response
    ) -> AskSpoken.Response:
        """Answer one spoken utterance (never raises: problems are replies with a message)."""
        start = time.perf_counter()
        self._count("requests")
        if not self._active:
            response.success = False
            why = self.asr_error if self.asr_state in ("error", "released") else ""
            response.message = not_active_reply(self, why)
            response.latency_s = time.perf_counter() - start
            return response
        if not self._reserve():
            self._count("busy")
            response.success = False
            response.message = f"busy: {self._pending} spoken requests are in progress"
            return response
        audio = request.audio
        try:
            await self._pipeline(
                lambda: self._prepare_request_audio(
                    audio.data, audio.sample_format, audio.channels, audio.sample_rate
                ),
                response,
                streamed=False,
            )
        except Exception as exc:  # a bug must not leave the caller without a reply
            self._count("failed")
            self.get_logger().error(f"ask_spoken failed: {exc!r}")
            response.success = False
            response.message = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._release()
        response.latency_s = time.perf_counter() - start
        return response

    # --- audio stream --------------------------------------------------------------------------
    def audio_cb(self, msg: AudioChunk) -> None:
        """Feed a chunk to the streaming VAD; finished utterances become requests."""
        if not self._active:  # a chunk that raced deactivate
            return
        self._count("chunks")
        self._last_chunk = time.monotonic()
        try:
            name = FORMATS.get(msg.sample_format)
            if name is None:
                raise SpeechInputError(f"unsupported sample_format {msg.sample_format}")
            cfg = self.audio_config
            if not cfg.min_sample_rate <= msg.sample_rate <= cfg.max_sample_rate:
                raise SpeechInputError(f"unsupported sample rate {msg.sample_rate} Hz")
            clip = clip_from_bytes(bytes(msg.data), name, msg.channels, msg.sample_rate)
            if self._vad is None or self._vad.sample_rate != clip.sample_rate:
                self._vad = StreamingVad(clip.sample_rate, self.vad_config)  # (re)start
            segments = self._vad.feed(clip.samples)
        except SpeechInputError as exc:
            self._count("chunks_rejected")
            self._vad = None  # drop a half-heard utterance rather than splice around a gap
            self.get_logger().warning(f"audio chunk dropped: {exc}", throttle_duration_sec=5.0)
            return
        except Exception as exc:  # an exception here would stop the executor: never raise
            self._count("chunks_rejected")
            self._vad = None
            self.get_logger().error(f"audio chunk failed: {exc!r}", throttle_duration_sec=5.0)
            return
        for segment in segments:
            self._on_segment(segment)

    def idle_cb(self) -> None:
        """Close an open utterance when the stream stops (no chunk for stream_idle_s)."""
        vad = self._vad
        if vad is None or not vad.in_speech:
            return
        if time.monotonic() - self._last_chunk < self.p["stream_idle_s"]:
            return
        for segment in vad.flush():
            self._on_segment(segment)

    def _on_segment(self, segment: SpeechSegment) -> None:
        self._count("utterances")
        if not self._reserve():
            self._count("busy")
            self.get_logger().warning(
                f"utterance of {segment.duration_s:.1f} s dropped: busy", throttle_duration_sec=5
            )
            return
        self.executor.create_task(self._stream_task, segment)

    async def _stream_task(self, segment: SpeechSegment) -> None:
        response = AskSpoken.Response()
        try:
            await self._pipeline(lambda: self._prepare_segment(segment), response, streamed=True)
            # rclpy loggers keep one severity per call site: two calls, not one with a variable
            if response.success:
                self.get_logger().info(f"heard {response.transcript!r}: {response.answer!r}")
            else:
                self.get_logger().info(f"heard {response.transcript!r}: {response.message}")
        except Exception as exc:  # never let a task's exception reach (and stop) the executor
            self._count("failed")
            self.get_logger().error(f"streamed utterance failed: {exc!r}")
        finally:
            self._release()

    # --- local audio devices (optional) --------------------------------------------------------
    def _import_sounddevice(self):
        try:
            import sounddevice
        except (ImportError, OSError) as exc:  # OSError: the package is there, PortAudio is not
            self.get_logger().warning(f"no local audio devices (sounddevice: {exc})")
            return None
        return sounddevice

    def _start_microphone(self):
        """Publish the default input device on audio_topic (100 ms S16LE chunks at 16 kHz)."""
        publisher = self.create_publisher(AudioChunk, self.p["audio_topic"], self.audio_qos)
        self._microphone_pub = publisher

        def on_audio(indata, frames, time_info, status) -> None:
            msg = AudioChunk(
                sample_rate=MIC_RATE, channels=1, sample_format=AudioChunk.FORMAT_S16LE
            )
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.data = indata.tobytes()
            publisher.publish(msg)

        try:
            stream = self._sounddevice.InputStream(
                samplerate=MIC_RATE, channels=1, dtype="int16", blocksize=MIC_BLOCK,
                callback=on_audio,
            )  # fmt: skip
            stream.start()
        except Exception as exc:
            self.get_logger().error(f"cannot open the microphone: {exc}")
            return None
        self.get_logger().info("microphone on")
        return stream

    def _play(self, clip: AudioClip) -> None:
        try:
            self._sounddevice.play(clip.samples, clip.sample_rate)
        except Exception as exc:
            self.get_logger().warning(f"cannot play the answer: {exc}", throttle_duration_sec=10)

    # --- status --------------------------------------------------------------------------------
    def status_cb(self) -> None:
        """Publish /diagnostics (a failure here is logged, never fatal)."""
        try:
            self._publish_diagnostics()
        except Exception as exc:
            self.get_logger().error(f"diagnostics failed: {exc!r}", throttle_duration_sec=10.0)

    def _publish_diagnostics(self) -> None:
        service_ready = self.ask_client.service_is_ready()
        state = lifecycle_state(self)
        if self.asr_state == "error":
            level, message = DiagnosticStatus.ERROR, self.asr_error
        elif state != "active":
            level, message = DiagnosticStatus.WARN, not_active_reply(self, self.asr_error)
        elif self.asr_state == "loading":
            level, message = DiagnosticStatus.WARN, "speech recogniser is loading"
        elif not service_ready:
            level, message = DiagnosticStatus.WARN, f"{self.p['ask_service']} is not available"
        else:
            level, message = DiagnosticStatus.OK, "ready"
        with self._stats_lock:
            stats = dict(self.stats)
            runs = stats.get("asr_runs", 0)
            mean_asr = self._asr_latency_sum / runs if runs else 0.0
            last_asr = self._last_asr_latency
        vad = self._vad
        values = {
            "lifecycle": state,
            "asr_backend": self.p["asr_backend"],
            "tts_backend": self.p["tts_backend"] if self._tts is not None else "none",
            "requests": stats.get("requests", 0),
            "utterances": stats.get("utterances", 0),
            "answered": stats.get("answered", 0),
            "rejected": stats.get("rejected", 0),
            "failed": stats.get("failed", 0),
            "busy": stats.get("busy", 0),
            "ask_calls": stats.get("ask_calls", 0),
            "tts_failed": stats.get("tts_failed", 0),
            "chunks": stats.get("chunks", 0),
            "chunks_rejected": stats.get("chunks_rejected", 0),
            "pending": self._pending,
            "asr_runs": runs,
            "mean_asr_latency_s": f"{mean_asr:.3f}",
            "last_asr_latency_s": f"{last_asr:.3f}",
            "vad_buffered_samples": vad.buffered_samples if vad is not None else 0,
        }
        header = Header(stamp=self.get_clock().now().to_msg())
        self.diagnostics_pub.publish(
            diagnostics(header, self.get_fully_qualified_name(), level, message, values)
        )

    def destroy_node(self) -> None:
        """Stop the microphone and the worker threads, then the node."""
        if self._microphone is not None:
            self._microphone.close()
            self._microphone = None
        self._workers.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run the speech bridge on a multi-threaded executor until shutdown."""
    run_node(SpeechNode, args)


if __name__ == "__main__":
    main()
