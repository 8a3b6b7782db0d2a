"""Clean-room CUT3R (continuous 3D perception with a persistent state) in plain PyTorch.

Loads the official checkpoints strictly (parameter names/shapes of ARCroco3DStereo) and exposes a
streaming API whose per-frame cost is constant:

    model = load_cut3r("cut3r_512_dpt_4_64.pth", device="cpu")
    state = model.init_state()
    for frame in frames:                       # HxWx3 uint8 RGB
        out = model.step(state, preprocess_frame(frame, size=512))
        out.camera_token                       # (1, config.dec_embed_dim)
        out.pose_c2w                           # (1, 4, 4) camera-to-world, first camera frame

`Cut3rConfig.tiny()` gives a small random model for tests.
"""

from loc3r.cut3r.checkpoint import (
    load_cut3r,
    load_official,
    load_pretrained,
    save_official,
    save_pretrained,
)
from loc3r.cut3r.config import Cut3rConfig, parse_constructor_string
from loc3r.cut3r.errors import (
    Cut3rCheckpointError,
    Cut3rConfigError,
    Cut3rError,
    Cut3rInputError,
    UnsafeCheckpointError,
)
from loc3r.cut3r.model import Cut3r, Cut3rOutput, Cut3rState
from loc3r.cut3r.preprocess import PreprocessedFrame, preprocess_frame

__all__ = [
    "Cut3r",
    "Cut3rCheckpointError",
    "Cut3rConfig",
    "Cut3rConfigError",
    "Cut3rError",
    "Cut3rInputError",
    "Cut3rOutput",
    "Cut3rState",
    "PreprocessedFrame",
    "UnsafeCheckpointError",
    "load_cut3r",
    "load_official",
    "load_pretrained",
    "parse_constructor_string",
    "preprocess_frame",
    "save_official",
    "save_pretrained",
]
