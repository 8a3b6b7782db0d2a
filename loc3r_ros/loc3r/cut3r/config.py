"""Typed configuration of the CUT3R model (official name: ARCroco3DStereo).

Field names follow the keyword arguments of the official `ARCroco3DStereoConfig(...)` constructor
string stored in checkpoints, so a checkpoint's string maps 1:1 onto this dataclass. The string is
parsed with the `ast` module: only literals (numbers, strings, booleans, None, tuples, lists) and
the names `inf` / `nan` are accepted; nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loc3r.cut3r.errors import Cut3rConfigError

INF = float("inf")

# Defaults of the official constructors, used for keywords absent from a constructor string.
# (ARCroco3DStereoConfig defaults, then the CroCo defaults it forwards **croco_kwargs to.)
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "output_mode": "pts3d",
    "head_type": "linear",
    "depth_mode": ("exp", -INF, INF),
    "conf_mode": ("exp", 1, INF),
    "pose_mode": ("exp", -INF, INF),
    "freeze": "none",
    "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R",
    "ray_enc_depth": 2,
    "state_size": 324,
    "local_mem_size": 256,
    "state_pe": "2d",
    "state_dec_num_heads": 16,
    "depth_head": False,
    "rgb_head": False,
    "pose_conf_head": False,
    "pose_head": False,
    "img_size": 224,
    "patch_size": 16,
    "mask_ratio": 0.9,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
}

OFFICIAL_MODEL_CLASS = "ARCroco3DStereo"
OFFICIAL_CONFIG_CLASS = "ARCroco3DStereoConfig"
RAY_MAP_ENCODER_NUM_HEADS = 16  # hard-coded in the official model, not a config field
_SAFE_NAMES = {"inf": INF, "nan": math.nan, "True": True, "False": False, "None": None}


@dataclass
class Cut3rConfig:
    """Architecture of a CUT3R model. Defaults describe the released 512 DPT model.

    Derived (read-only) values are filled in `__post_init__`: `rope_freq`, `enc_head_dim`,
    `dec_head_dim`, `state_grid_width`.
    """

    img_size: tuple[int, int] = (512, 512)  # nominal training size (H, W); any multiple of patch
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768  # width of the camera token
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_im2_in_dec: bool = True
    pos_embed: str = "RoPE100"
    head_type: str = "dpt"  # "linear" or "dpt"
    output_mode: str = "pts3d+pose"
    depth_mode: tuple[str, float, float] = ("exp", -INF, INF)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, INF)
    pose_mode: tuple[str, float, float] = ("exp", -INF, INF)
    state_size: int = 768
    local_mem_size: int = 256
    state_pe: str = "2d"  # "2d", "1d" or "none"
    state_dec_num_heads: int = 16
    ray_enc_depth: int = 2
    rgb_head: bool = True
    pose_head: bool = True
    depth_head: bool = False
    pose_conf_head: bool = False
    freeze: str = "encoder"  # training-only flag of the official code, kept for round trips
    landscape_only: bool = False  # the official loader forces False; kept for round trips
    patch_embed_cls: str = "ManyAR_PatchEmbed"  # both official classes behave alike here
    mask_ratio: float = 0.9  # CroCo pretraining only, unused at inference

    rope_freq: float = field(init=False)
    enc_head_dim: int = field(init=False)
    dec_head_dim: int = field(init=False)
    state_grid_width: int = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(v) for v in self.img_size)  # type: ignore[assignment]
        self.depth_mode = _as_mode(self.depth_mode, "depth_mode")
        self.conf_mode = _as_mode(self.conf_mode, "conf_mode")
        self.pose_mode = _as_mode(self.pose_mode, "pose_mode")
        self.mlp_ratio = float(self.mlp_ratio)
        if not self.pos_embed.startswith("RoPE"):
            raise Cut3rConfigError(
                f"pos_embed={self.pos_embed!r} is not supported (only 'RoPE<freq>', e.g. 'RoPE100')"
            )
        try:
            self.rope_freq = float(self.pos_embed[len("RoPE") :])
        except ValueError as exc:
            raise Cut3rConfigError(f"cannot read a RoPE frequency from {self.pos_embed!r}") from exc
        if self.head_type not in ("linear", "dpt"):
            raise Cut3rConfigError(f"head_type={self.head_type!r}: expected 'linear' or 'dpt'")
        if self.output_mode != "pts3d+pose":
            raise Cut3rConfigError(
                f"output_mode={self.output_mode!r} is not supported (only 'pts3d+pose')"
            )
        if not self.pose_head:
            raise Cut3rConfigError("pose_head=False is not supported: the camera token needs it")
        if self.depth_head or self.pose_conf_head:
            raise Cut3rConfigError("depth_head / pose_conf_head variants are not supported")
        if self.state_pe not in ("2d", "1d", "none"):
            raise Cut3rConfigError(f"state_pe={self.state_pe!r}: expected '2d', '1d' or 'none'")
        if self.depth_mode[0] not in ("exp", "square", "linear"):
            raise Cut3rConfigError(f"depth_mode={self.depth_mode!r}: unknown mode")
        if self.conf_mode[0] not in ("exp", "sigmoid"):
            raise Cut3rConfigError(f"conf_mode={self.conf_mode!r}: unknown mode")
        if self.pose_mode[0] not in ("exp", "square"):
            raise Cut3rConfigError(f"pose_mode={self.pose_mode!r}: expected 'exp' or 'square'")
        for name in ("depth_mode", "pose_mode"):
            mode = getattr(self, name)
            if not (mode[1] == -INF and mode[2] == INF):
                raise Cut3rConfigError(f"{name}={mode!r}: bounded modes are not supported")
        for dim_name, heads_name, heads in (
            ("enc_embed_dim", "enc_num_heads", self.enc_num_heads),
            ("enc_embed_dim", "ray map encoder heads", RAY_MAP_ENCODER_NUM_HEADS),
            ("dec_embed_dim", "dec_num_heads", self.dec_num_heads),
            ("dec_embed_dim", "state_dec_num_heads", self.state_dec_num_heads),
        ):
            dim = getattr(self, dim_name)
            if heads <= 0 or dim % heads != 0 or (dim // heads) % 4 != 0:
                raise Cut3rConfigError(
                    f"{dim_name}={dim} with {heads_name}={heads}: the head width must be an "
                    "integer multiple of 4 (2D RoPE splits it in two rotated halves)"
                )
        if (2 * self.dec_embed_dim) % self.dec_num_heads != 0:
            raise Cut3rConfigError("2*dec_embed_dim must be divisible by dec_num_heads")
        if self.head_type == "dpt" and self.patch_size != 16:
            raise Cut3rConfigError("the DPT head is built for patch_size 16 (fixed 1/16 scales)")
        if any(s % self.patch_size for s in self.img_size):
            raise Cut3rConfigError(f"img_size={self.img_size} must be multiples of patch_size")
        if self.dec_depth < 2:
            raise Cut3rConfigError("dec_depth must be >= 2 (heads read decoder layers 2D/4, 3D/4)")
        for name in ("enc_depth", "dec_depth", "state_size", "local_mem_size", "patch_size"):
            if int(getattr(self, name)) <= 0:
                raise Cut3rConfigError(f"{name} must be positive, got {getattr(self, name)}")
        self.enc_head_dim = self.enc_embed_dim // self.enc_num_heads
        self.dec_head_dim = self.dec_embed_dim // self.dec_num_heads
        width = int(self.state_size**0.5)
        self.state_grid_width = width + 1 if width % 2 == 1 else width

    # ----------------------------------------------------------------- presets
    @classmethod
    def dpt_512(cls) -> Cut3rConfig:
        """The released `cut3r_512_dpt_4_64.pth` architecture."""
        return cls()

    @classmethod
    def linear_224(cls) -> Cut3rConfig:
        """The released `cut3r_224_linear_4.pth` architecture."""
        return cls(img_size=(224, 224), head_type="linear", patch_embed_cls="PatchEmbedDust3R")

    @classmethod
    def tiny(cls, head_type: str = "linear") -> Cut3rConfig:
        """A few-hundred-k-parameter model for tests and benchmarks (random weights only)."""
        return cls(
            img_size=(64, 64),
            patch_size=8,
            enc_embed_dim=64,
            enc_depth=2,
            enc_num_heads=4,
            dec_embed_dim=24,
            dec_depth=3,
            dec_num_heads=2,
            state_size=16,
            local_mem_size=8,
            state_dec_num_heads=2,
            ray_enc_depth=1,
            head_type=head_type,
        )

    # ------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the init fields (infinities written as "inf"/"-inf")."""
        init_names = {f.name for f in fields(self) if f.init}
        out = {k: v for k, v in asdict(self).items() if k in init_names}
        for key in ("depth_mode", "conf_mode", "pose_mode", "img_size"):
            out[key] = [_json_number(v) for v in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cut3rConfig:
        """Inverse of `to_dict` (unknown keys are an error)."""
        init_names = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - init_names)
        if unknown:
            raise Cut3rConfigError(f"unknown Cut3rConfig fields: {unknown}")
        kwargs = dict(data)
        if "img_size" in kwargs:
            kwargs["img_size"] = tuple(kwargs["img_size"])
        return cls(**kwargs)

    @classmethod
    def from_constructor_kwargs(cls, kwargs: dict[str, Any]) -> Cut3rConfig:
        """Build from the keyword arguments of an official `ARCroco3DStereoConfig(...)` call."""
        unknown = sorted(set(kwargs) - set(OFFICIAL_DEFAULTS))
        if unknown:
            raise Cut3rConfigError(f"unsupported ARCroco3DStereoConfig keywords: {unknown}")
        merged = {**OFFICIAL_DEFAULTS, **kwargs}
        merged["landscape_only"] = False  # the official loader always forces this
        return cls(**merged)

    @classmethod
    def from_constructor_string(cls, text: str) -> Cut3rConfig:
        """Parse an official constructor string safely (see `parse_constructor_string`)."""
        return cls.from_constructor_kwargs(parse_constructor_string(text))

    def to_constructor_string(self) -> str:
        """An official-format constructor string describing this config."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.init]
        return f"{OFFICIAL_MODEL_CLASS}({OFFICIAL_CONFIG_CLASS}({', '.join(parts)}))"


def parse_constructor_string(text: str) -> dict[str, Any]:
    """Keyword arguments of `ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))`, parsed safely.

    Only literal values are accepted (plus the names inf/nan); any call, attribute, operator or
    other name raises `Cut3rConfigError`. The `ManyAR_PatchEmbed` rename of the official loader is
    irrelevant here (both patch embeddings behave identically for our inputs).
    """
    if not isinstance(text, str):
        raise Cut3rConfigError(f"constructor string must be str, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise Cut3rConfigError(f"constructor string is not valid Python syntax: {exc}") from exc
    outer = tree.body
    if not (
        isinstance(outer, ast.Call)
        and isinstance(outer.func, ast.Name)
        and outer.func.id == OFFICIAL_MODEL_CLASS
        and len(outer.args) == 1
        and not outer.keywords
    ):
        raise Cut3rConfigError(
            f"expected '{OFFICIAL_MODEL_CLASS}({OFFICIAL_CONFIG_CLASS}(...))', got {text[:120]!r}"
        )
    inner = outer.args[0]
    if not (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Name)
        and inner.func.id == OFFICIAL_CONFIG_CLASS
        and not inner.args
    ):
        raise Cut3rConfigError(f"expected keyword arguments in {OFFICIAL_CONFIG_CLASS}(...)")
    result: dict[str, Any] = {}
    for keyword in inner.keywords:
        if keyword.arg is None:
            raise Cut3rConfigError("'**kwargs' is not allowed in a constructor string")
        if keyword.arg in result:
            raise Cut3rConfigError(f"keyword {keyword.arg!r} given twice")
        result[keyword.arg] = _literal_value(keyword.value, keyword.arg)
    return result


def _literal_value(node: ast.AST, key: str) -> Any:
    """Value of a literal AST node; the names inf/nan allowed, everything else rejected."""
    if isinstance(node, ast.Name):
        if node.id in _SAFE_NAMES:
            return _SAFE_NAMES[node.id]
        raise Cut3rConfigError(f"{key}: name {node.id!r} is not a literal")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal_value(node.operand, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Cut3rConfigError(f"{key}: unary sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal_value(elt, key) for elt in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Constant):
        return ast.literal_eval(node)
    raise Cut3rConfigError(f"{key}: {type(node).__name__} is not allowed (literals only)")


def _as_mode(mode: Any, name: str) -> tuple[str, float, float]:
    if not (isinstance(mode, (tuple, list)) and len(mode) == 3 and isinstance(mode[0], str)):
        raise Cut3rConfigError(f"{name} must be (name, vmin, vmax), got {mode!r}")
    try:
        return (mode[0], _from_json_number(mode[1]), _from_json_number(mode[2]))
    except Cut3rConfigError as exc:
        raise Cut3rConfigError(f"{name}: {exc}") from exc


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _from_json_number(value: Any) -> Any:
    if isinstance(value, str):
        if value in ("inf", "-inf"):
            return float(value)
        raise Cut3rConfigError(f"expected a number, got {value!r}")
    return value
