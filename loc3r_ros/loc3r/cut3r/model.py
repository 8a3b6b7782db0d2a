"""CUT3R (official class ARCroco3DStereo): a recurrent 3D model with a fixed-size state.

Per frame t (online, one `step` per frame):
  1. encoder: image (B, 3, H, W) in [-1, 1] -> patch tokens f_t (B, N, Ce) with 2D RoPE
     (the q/k rotation is done in float16, as in the reference);
  2. camera query: at frame 0 the learned `pose_token`; afterwards read from the local pose
     memory with the mean image token as key -> (B, 1, Cd), placed at position (-1, -1);
  3. two coupled decoders, layer by layer: the state stream (B, S, Cd) cross-attends to
     [query, image tokens], the image stream (B, 1 + N, Cd) cross-attends to the state;
  4. heads: camera token = image stream token 0 after `dec_norm` -> pose (7-vector,
     camera-to-world in the first camera's OpenCV frame, metric); point maps in the own and
     the world frame, confidences (and rgb);
  5. the state becomes the normalised state stream; the pose memory is written with
     [proj(mean image token), camera token].
The state (S tokens + M memory slots) has a fixed size, so a step costs the same at every frame.

Devices/dtypes: float32 on CPU reproduces the official numerics (fixture tests, <= 1e-4).
Attention uses `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on CUDA). `Cut3r.set_compute_dtype(torch.bfloat16 | torch.float16)` casts the backbone
and keeps the heads in float32 (the official code also runs heads and RoPE in float32); under
`torch.autocast` RoPE and heads disable autocast themselves. Verified here: float32 CPU (exact),
bfloat16 CPU (runs, finite, close). Not verified here (no GPU): CUDA kernels and fp16 range.
The ray-map encoder's parameters are loaded (strict checkpoints) but ray-map input is not offered.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from loc3r.cut3r.blocks import DecoderBlock, EncoderBlock, PatchEmbed, layer_norm
from loc3r.cut3r.config import RAY_MAP_ENCODER_NUM_HEADS, Cut3rConfig
from loc3r.cut3r.errors import Cut3rInputError
from loc3r.cut3r.heads import build_head, pose_encoding_to_c2w
from loc3r.cut3r.preprocess import PreprocessedFrame, preprocess_frame
from loc3r.cut3r.rope import MAX_POSITION, RoPE2D

CAMERA_TOKEN_POSITION = -1  # the camera query sits at (y, x) = (-1, -1) in the decoders


def _recompile_limit_errors() -> tuple[type[Exception], ...]:
    """Dynamo's "too many recompiles" errors of this torch version (a fullgraph function)."""
    import torch._dynamo.exc as dynamo_errors

    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
    return tuple(e for e in (getattr(dynamo_errors, n, None) for n in names) if e is not None)


# what an inference step keeps of a frame (`Cut3r._frame_tensors`)
_STEP_OUTPUTS = ("state", "memory", "camera_token", "pose_encoding", "pts3d_self", "pts3d_world",
                 "conf_self", "conf_world", "rgb")  # fmt: skip


@dataclass
class Cut3rState:
    """Recurrent state carried between frames (fixed size; `step` updates it in place)."""

    state_feat: torch.Tensor  # (B, S, Cd) state tokens
    state_pos: torch.Tensor | None  # (B, S, 2) int64 RoPE positions of the state tokens
    memory: torch.Tensor  # (B, M, 2 Cd) local pose memory
    init_state_feat: torch.Tensor  # (B, S, Cd) for resets
    init_memory: torch.Tensor  # (B, M, 2 Cd)
    frame_index: int = 0  # frames processed so far (also counts update=False steps)

    @property
    def batch_size(self) -> int:
        """Number of parallel streams."""
        return self.state_feat.shape[0]

    def num_elements(self) -> int:
        """Total number of tensor elements held (constant over a stream)."""
        tensors = [self.state_feat, self.memory, self.init_state_feat, self.init_memory]
        if self.state_pos is not None:
            tensors.append(self.state_pos)
        return sum(t.numel() for t in tensors)

    def reset(self) -> None:
        """Back to the initial state (the next frame still uses the memory query, as upstream)."""
        self.state_feat = self.init_state_feat.clone()
        self.memory = self.init_memory.clone()


@dataclass
class Cut3rOutput:
    """Per-frame outputs (float32; B streams)."""

    frame_index: int
    camera_token: torch.Tensor  # (B, Cd) last decoder layer token 0 after dec_norm
    pose_encoding: torch.Tensor  # (B, 7) t_xyz, q_wxyz (w >= 0): camera-to-world
    pose_c2w: torch.Tensor  # (B, 4, 4) camera-to-world, first camera's OpenCV frame, metres
    pts3d_self: torch.Tensor  # (B, H, W, 3) points in this camera's frame, metres
    pts3d_world: torch.Tensor  # (B, H, W, 3) points in the first camera's frame, metres
    conf_self: torch.Tensor  # (B, H, W) >= 1
    conf_world: torch.Tensor  # (B, H, W) >= 1
    rgb: torch.Tensor | None = None  # (B, H, W, 3) in [-1, 1] when the model has an rgb head
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)  # debug/test only


class LocalPoseMemory(nn.Module):
    """Local pose memory (official name `pose_retriever`): M slots of width 2 Cd.

    Read and written by decoder blocks without RoPE. Keys: proj_q(mean image token); values:
    camera tokens.
    """

    def __init__(self, size: int, key_dim: int, value_dim: int, num_heads: int) -> None:
        super().__init__()
        self.value_dim = value_dim
        self.proj_q = nn.Linear(key_dim, value_dim)
        self.masked_token = nn.Parameter(torch.randn(1, 1, value_dim) * 0.2)
        self.mem = nn.Parameter(torch.randn(1, size, 2 * value_dim) * 0.2)
        width = 2 * value_dim
        self.write_blocks = nn.ModuleList(
            [DecoderBlock(width, num_heads, 4.0, rope=None) for _ in range(2)]
        )
        self.read_blocks = nn.ModuleList(
            [DecoderBlock(width, num_heads, 4.0, rope=None) for _ in range(2)]
        )

    def read(self, image_feat: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """image_feat (B, 1, Ce), memory (B, M, 2 Cd) -> camera query (B, 1, Cd)."""
        query = self.proj_q(image_feat)
        masked = self.masked_token.expand(query.shape[0], -1, -1).to(query.dtype)
        x = torch.cat([query, masked], dim=-1)
        for block in self.read_blocks:
            x = block(x, memory, None, None)
        return x[..., -self.value_dim :]

    def write(
        self, memory: torch.Tensor, image_feat: torch.Tensor, camera_token: torch.Tensor
    ) -> torch.Tensor:
        """Memory (B, M, 2 Cd) updated with [proj(image_feat), camera_token (B, 1, Cd)]."""
        entry = torch.cat([self.proj_q(image_feat), camera_token], dim=-1)
        for block in self.write_blocks:
            memory = block(memory, entry, None, None)
        return memory


class Cut3r(nn.Module):
    """CUT3R with a streaming API (`init_state` / `step`) and `run` over a list of frames."""

    def __init__(self, config: Cut3rConfig) -> None:
        super().__init__()
        self.config = config
        enc, dec = config.enc_embed_dim, config.dec_embed_dim
        self.rope = RoPE2D(config.rope_freq)
        # (image_pos, its version, [camera (-1, -1), image_pos]): see _image_stream_positions
        self._stream_positions: tuple[torch.Tensor, int, torch.Tensor] | None = None
        # image encoder (q/k rotated in float16, as the reference) and unused ray-map encoder
        self.patch_embed = PatchEmbed(config.patch_size, 3, enc)
        self.patch_embed_ray_map = PatchEmbed(config.patch_size, 6, enc)
        self.enc_blocks = nn.ModuleList(
            [
                EncoderBlock(enc, config.enc_num_heads, config.mlp_ratio, self.rope, torch.float16)
                for _ in range(config.enc_depth)
            ]
        )
        self.enc_norm = layer_norm(enc)
        self.enc_blocks_ray_map = nn.ModuleList(
            [
                EncoderBlock(enc, RAY_MAP_ENCODER_NUM_HEADS, 4.0, self.rope)
                for _ in range(config.ray_enc_depth)
            ]
        )
        self.enc_norm_ray_map = layer_norm(enc)
        self.masked_img_token = nn.Parameter(torch.randn(1, enc) * 0.02)
        self.masked_ray_map_token = nn.Parameter(torch.randn(1, enc) * 0.02)
        # image decoder (reads the state)
        self.decoder_embed = nn.Linear(enc, dec)
        self.dec_blocks = nn.ModuleList(
            [
                DecoderBlock(
                    dec, config.dec_num_heads, config.mlp_ratio, self.rope, config.norm_im2_in_dec
                )
                for _ in range(config.dec_depth)
            ]
        )
        self.dec_norm = layer_norm(dec)
        # camera query
        self.pose_token = nn.Parameter(torch.randn(1, 1, dec) * 0.02)
        self.pose_retriever = LocalPoseMemory(config.local_mem_size, enc, dec, config.dec_num_heads)
        # state and state decoder (reads the image)
        self.register_tokens = nn.Embedding(config.state_size, enc)
        self.decoder_embed_state = nn.Linear(enc, dec)
        self.dec_blocks_state = nn.ModuleList(
            [
                DecoderBlock(
                    dec,
                    config.state_dec_num_heads,
                    config.mlp_ratio,
                    self.rope,
                    config.norm_im2_in_dec,
                )
                for _ in range(config.dec_depth)
            ]
        )
        self.dec_norm_state = layer_norm(dec)
        self.downstream_head = build_head(config, self.rope)
        self._compiled_frame: Callable | None = None  # see compile_step

    # --------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.patch_embed.proj.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of the backbone parameters (heads always float32)."""
        return self.patch_embed.proj.weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> Cut3r:
        """Cast everything but the heads to `dtype` (heads stay float32, as the reference)."""
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise Cut3rInputError(f"unsupported compute dtype {dtype}")
        for name, module in self.named_children():
            module.to(torch.float32 if name == "downstream_head" else dtype)
        for param in self.parameters(recurse=False):
            param.data = param.data.to(dtype)
        return self

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> tokens (B, N, Ce) after enc_norm, positions (B, N, 2)."""
        x, pos = self.patch_embed(images)
        for block in self.enc_blocks:
            x = block(x, pos)
        return self.enc_norm(x), pos

    def _image_stream_positions(self, image_pos: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, 2): the camera query at (-1, -1), then `image_pos` (B, N, 2).

        Cached per `image_pos` tensor (the patch embedding hands out the same one every frame),
        so RoPE finds its tables for the result too; rebuilt if `image_pos` changed in place.
        """
        if torch.compiler.is_compiling() or image_pos.is_inference():  # not cached (traced, or
            return self._build_image_stream_positions(image_pos)  # no version counter)
        cached = self._stream_positions
        if cached is not None and cached[0] is image_pos and cached[1] == image_pos._version:
            return cached[2]
        with torch.inference_mode(False), torch.no_grad():
            img_pos = self._build_image_stream_positions(image_pos)
        self._stream_positions = (image_pos, image_pos._version, img_pos)
        return img_pos

    @staticmethod
    def _build_image_stream_positions(image_pos: torch.Tensor) -> torch.Tensor:
        query_pos = torch.full(
            (image_pos.shape[0], 1, 2),
            CAMERA_TOKEN_POSITION,
            dtype=image_pos.dtype,
            device=image_pos.device,
        )
        return torch.cat([query_pos, image_pos], dim=1)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        self._stream_positions = None  # moved / cast: drop positions of the old device
        return super()._apply(fn, recurse)

    def _state_positions(self, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.config.state_pe == "none":
            return None
        # a normal tensor even under inference_mode, so RoPE can cache its tables
        with torch.inference_mode(False), torch.no_grad():
            return self._build_state_positions(batch, device)

    def _build_state_positions(self, batch: int, device: torch.device) -> torch.Tensor:
        size = self.config.state_size
        index = torch.arange(size, device=device)
        if self.config.state_pe == "1d":
            pos = torch.stack([index, index], dim=-1)
        else:
            width = self.config.state_grid_width
            pos = torch.stack([index // width, index % width], dim=-1)
        return pos[None].expand(batch, -1, -1).contiguous()

    # ----------------------------------------------------------------------- streaming API
    def init_state(self, batch_size: int = 1, *, grad: bool = False) -> Cut3rState:
        """A fresh state for `batch_size` parallel streams (independent of any image).

        `grad=True` keeps it in the autograd graph (training the learned initial state).
        """
        if batch_size < 1:
            raise Cut3rInputError(f"batch_size must be >= 1, got {batch_size}")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._initial_state(batch_size)

    def _initial_state(self, batch_size: int) -> Cut3rState:
        device = self.device
        tokens = self.register_tokens(torch.arange(self.config.state_size, device=device))
        state_feat = self.decoder_embed_state(tokens[None].expand(batch_size, -1, -1))
        memory = self.pose_retriever.mem.expand(batch_size, -1, -1)
        return Cut3rState(
            state_feat=state_feat,
            state_pos=self._state_positions(batch_size, device),
            memory=memory.clone(),
            init_state_feat=state_feat.clone(),
            init_memory=memory.clone(),
        )

    def _as_image_tensor(
        self, image: torch.Tensor | PreprocessedFrame | np.ndarray, batch_size: int
    ) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = preprocess_frame(image, size=max(self.config.img_size))
        if isinstance(image, PreprocessedFrame):
            image = image.image
        if not isinstance(image, torch.Tensor):
            raise Cut3rInputError(
                f"image must be a tensor, PreprocessedFrame or numpy array, got {type(image)}"
            )
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[1] != 3:
            raise Cut3rInputError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise Cut3rInputError(
                f"image must be float in [-1, 1] (use preprocess_frame), got {image.dtype}"
            )
        patch = self.config.patch_size
        if image.shape[-2] % patch or image.shape[-1] % patch:
            raise Cut3rInputError(
                f"image size {tuple(image.shape[-2:])} is not a multiple of patch {patch}"
            )
        if max(image.shape[-2:]) // patch >= MAX_POSITION:
            raise Cut3rInputError(f"image size {tuple(image.shape[-2:])} is too large")
        if image.shape[0] != batch_size:
            raise Cut3rInputError(
                f"image batch {image.shape[0]} does not match the state's batch {batch_size}"
            )
        return image.to(device=self.device, dtype=self.compute_dtype)

    def _decode(
        self,
        state_feat: torch.Tensor,
        state_pos: torch.Tensor | None,
        image_feat: torch.Tensor,
        image_pos: torch.Tensor,
        camera_query: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Both decoders, layer by layer; returns new state and per-layer image/state outputs.

        image stream: (B, 1 + N, Cd) with the camera query first at position (-1, -1).
        Returns (normalised final state (B, S, Cd), raw image outputs of every block,
        raw state outputs of every block).
        """
        img = torch.cat([camera_query.to(image_feat.dtype), self.decoder_embed(image_feat)], dim=1)
        img_pos = self._image_stream_positions(image_pos)
        image_outputs, state_outputs = [], []  # raw block outputs (before the final norms)
        state = state_feat
        for state_block, image_block in zip(self.dec_blocks_state, self.dec_blocks, strict=True):
            new_state = state_block(state, img, state_pos, img_pos)
            img = image_block(img, state, img_pos, state_pos)
            state = new_state
            image_outputs.append(img)
            state_outputs.append(state)
        return self.dec_norm_state(state), image_outputs, state_outputs

    @torch.no_grad()
    def step(
        self,
        state: Cut3rState,
        image: torch.Tensor | PreprocessedFrame | np.ndarray,
        *,
        update: bool = True,
        return_intermediates: bool = False,
    ) -> Cut3rOutput:
        """Process one frame: (B, 3, H, W) in [-1, 1] (or a PreprocessedFrame / raw numpy image).

        Updates `state` in place (unless `update=False`: outputs are produced, the state and
        memory stay as they were, like the official `update` flag) and returns the outputs.
        """
        return self.forward_step(
            state, image, update=update, return_intermediates=return_intermediates
        )

    def compile_step(self, options: dict | None) -> None:
        """Run inference steps through `torch.compile(**options)` of the frame computation.

        On CUDA, {"mode": "reduce-overhead"} records it as a CUDA graph per stream shape (one
        replay per frame instead of thousands of launches); None: eager again. The whole frame
        (encoder, pose memory, decoders, head) traces as one graph, two per stream shape (frame
        0 and the rest). Training (`forward_step` with gradients) and `return_intermediates`
        stay eager, and so does every step after dynamo's recompile limit is reached (many
        shapes; said once).
        """
        self._compiled_frame = (
            None
            if options is None
            else torch.compile(self._frame_tensors, dynamic=False, fullgraph=True, **options)
        )

    def _frame(
        self,
        images: torch.Tensor,
        state_feat: torch.Tensor,
        state_pos: torch.Tensor | None,
        memory: torch.Tensor,
        first: bool,
    ) -> dict:
        """One frame: new state and memory, camera token, head outputs, and what debugging reads."""
        height, width = images.shape[-2:]
        image_feat, image_pos = self.encode(images)  # (B, N, Ce), (B, N, 2)
        global_feat = image_feat.mean(dim=1, keepdim=True)  # (B, 1, Ce)
        if first:
            camera_query = self.pose_token.expand(images.shape[0], -1, -1)
        else:
            camera_query = self.pose_retriever.read(global_feat, memory)
        new_state, image_outputs, state_outputs = self._decode(
            state_feat, state_pos, image_feat, image_pos, camera_query
        )
        last = self.dec_norm(image_outputs[-1])  # (B, 1 + N, Cd)
        camera_token = last[:, 0:1]
        new_memory = self.pose_retriever.write(memory, global_feat, camera_token)
        depth = self.config.dec_depth
        # dec[0] = encoder tokens, dec[k] = output of decoder block k, dec[D] normalised
        dec = [image_feat, *image_outputs[:-1], last]
        head_layers = [
            dec[0].float(),
            dec[depth * 2 // 4][:, 1:].float(),
            dec[depth * 3 // 4][:, 1:].float(),
            dec[depth].float(),
        ]
        head = self.downstream_head(head_layers, (int(height), int(width)), image_pos)
        return {
            "state": new_state, "memory": new_memory, "camera_token": camera_token[:, 0].float(),
            "pose_encoding": head.pose_encoding, "pts3d_self": head.pts3d_self,
            "pts3d_world": head.pts3d_world, "conf_self": head.conf_self,
            "conf_world": head.conf_world, "rgb": head.rgb, "image_feat": image_feat,
            "camera_query": camera_query, "image_outputs": image_outputs,
            "state_outputs": state_outputs, "last": last,
        }  # fmt: skip

    def _frame_tensors(
        self,
        images: torch.Tensor,
        state_feat: torch.Tensor,
        state_pos: torch.Tensor | None,
        memory: torch.Tensor,
        first: bool,
    ) -> dict:
        """`_frame` without what only debugging reads (what `compile_step` compiles)."""
        out = self._frame(images, state_feat, state_pos, memory, first)
        return {k: v for k, v in out.items() if k in _STEP_OUTPUTS}

    def forward_step(
        self,
        state: Cut3rState,
        image: torch.Tensor | PreprocessedFrame | np.ndarray,
        *,
        update: bool = True,
        return_intermediates: bool = False,
    ) -> Cut3rOutput:
        """`step` with autograd (training): gradients flow through the state across frames."""
        if not isinstance(state, Cut3rState):
            raise Cut3rInputError(f"state must be a Cut3rState, got {type(state)}")
        images = self._as_image_tensor(image, state.batch_size)
        args = (images, state.state_feat, state.state_pos, state.memory, state.frame_index == 0)
        compiled = self._compiled_frame
        if compiled is not None and not return_intermediates and not torch.is_grad_enabled():
            mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
            if mark_step is not None and images.is_cuda:
                mark_step()  # a new replay overwrites the previous one's outputs: copy them
            try:
                out = {k: None if v is None else v.clone() for k, v in compiled(*args).items()}
            except _recompile_limit_errors() as exc:
                warnings.warn(f"CUT3R runs eager from now on: {exc}", stacklevel=2)
                self._compiled_frame = None
                out = self._frame(*args)
        else:
            out = self._frame(*args)
        intermediates: dict[str, torch.Tensor] = {}
        if return_intermediates:
            intermediates = {
                "enc_feat": out["image_feat"].float(),
                "pose_token_in": out["camera_query"].detach().float()[:, 0],
                "dec_block_out": torch.stack([t.float() for t in out["image_outputs"]], 1),
                "dec_final_tokens": out["last"].float(),
                "state_block_out": torch.stack([t.float() for t in out["state_outputs"]], 1),
            }
        output = Cut3rOutput(
            frame_index=state.frame_index,
            camera_token=out["camera_token"],
            pose_encoding=out["pose_encoding"],
            pose_c2w=pose_encoding_to_c2w(out["pose_encoding"]),
            pts3d_self=out["pts3d_self"],
            pts3d_world=out["pts3d_world"],
            conf_self=out["conf_self"],
            conf_world=out["conf_world"],
            rgb=out["rgb"],
            intermediates=intermediates,
        )
        if update:
            state.state_feat = out["state"]
            state.memory = out["memory"]
        if return_intermediates:
            intermediates["state_feat_after"] = state.state_feat.float()
            intermediates["mem_after"] = state.memory.float()
        state.frame_index += 1
        return output

    def run(
        self,
        frames: Sequence[torch.Tensor | PreprocessedFrame | np.ndarray],
        *,
        return_intermediates: bool = False,
    ) -> list[Cut3rOutput]:
        """Run a fresh stream over `frames` (same as init_state + step per frame)."""
        if len(frames) == 0:
            raise Cut3rInputError("run() needs at least one frame")
        first = frames[0]
        if isinstance(first, PreprocessedFrame):
            batch = first.image.shape[0] if first.image.ndim == 4 else 1
        elif isinstance(first, torch.Tensor) and first.ndim == 4:
            batch = first.shape[0]
        else:
            batch = 1
        state = self.init_state(batch)
        return [self.step(state, f, return_intermediates=return_intermediates) for f in frames]

    def forward(
        self, frames: Sequence[torch.Tensor | PreprocessedFrame | np.ndarray]
    ) -> list[Cut3rOutput]:
        """Same as `run(frames)` (so `model(frames)` works)."""
        return self.run(frames)

    def num_parameters(self) -> int:
        """Number of distinct parameters."""
        return sum(p.numel() for p in self.parameters())
