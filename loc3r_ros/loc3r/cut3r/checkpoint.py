"""Reading and writing CUT3R checkpoints, safely.

Official format (`.pth`): a `torch.save`d dict {"args": <object whose .model is the constructor
string "ARCroco3DStereo(ARCroco3DStereoConfig(...))">, "model": state_dict, ...}. `args` is an
`argparse.Namespace` in the fixtures, and may be an OmegaConf/Hydra object in training dumps.

Safety: files are read with `torch.load(weights_only=True)` (torch's restricted unpickler) with
`argparse.Namespace` allowlisted. Any other class or function named in the pickle is mapped to an
inert stand-in (`InertObject`: stores its constructor arguments and state as plain data; nothing is
imported or executed), except globals of modules that only make sense for attacks (os, sys,
subprocess, builtins, ...), which raise `UnsafeCheckpointError`. The constructor string is parsed
with `ast` (see `config.parse_constructor_string`), never evaluated.

Our format: a directory with `model.safetensors` (tensors) and `config.json` (`Cut3rConfig`).
"""

from __future__ import annotations

import argparse
import io
import json
import pickletools
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loc3r.cut3r.config import OFFICIAL_MODEL_CLASS, Cut3rConfig
from loc3r.cut3r.errors import (
    Cut3rCheckpointError,
    Cut3rConfigError,
    UnsafeCheckpointError,
)
from loc3r.cut3r.model import Cut3r
from loc3r.state_dict import state_dict_mismatch

SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_NAME = "loc3r.cut3r"
FORMAT_VERSION = 1
_SCAN_LIMIT_BYTES = 64 * 1024 * 1024  # legacy (non-zip) files: pickle streams scanned statically
_FORBIDDEN_MODULE_ROOTS = {
    "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib", "runpy", "code",
    "codeop", "pickle", "_pickle", "marshal", "ctypes", "pty", "webbrowser", "multiprocessing",
    "asyncio", "signal", "_posixsubprocess", "commands",
}  # fmt: skip
_FORBIDDEN_BUILTINS = {
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "input",
    "breakpoint", "globals", "locals", "vars", "exit", "quit", "apply", "execfile",
}  # fmt: skip


class InertObject:
    """Plain-data stand-in for a class/function named in a pickle (never the real thing)."""

    pickle_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:  # noqa: D102
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:  # noqa: D105
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickle_name}>"


def _is_forbidden_global(full_name: str) -> bool:
    """Globals whose only use in a checkpoint is running code (refused with a clear error)."""
    root, _, attr = full_name.partition(".")
    if root in ("builtins", "__builtin__"):
        return attr in _FORBIDDEN_BUILTINS
    return root in _FORBIDDEN_MODULE_ROOTS


def _scan_pickle_globals(data: bytes, max_pickles: int = 8) -> list[str]:
    """Names of the globals in the leading pickle stream(s) of `data`, read statically."""
    names: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        if stream.tell() >= len(data):
            break
        strings: list[str] = []
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle stream: stop scanning
            break
    return names


def _inert_class(full_name: str) -> type[InertObject]:
    return type(f"Inert[{full_name}]", (InertObject,), {"pickle_name": full_name})


def _torch_load(path: Path, extra_globals: list[Any]) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace, *extra_globals]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_official_checkpoint(path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """Safely unpickle an official `.pth`; returns (args object, state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise Cut3rCheckpointError(f"checkpoint not found: {path}")
    extra: list[Any] = []
    if zipfile.is_zipfile(path):
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader failure means a broken file
            raise Cut3rCheckpointError(
                f"cannot read {path}: not a complete torch checkpoint ({exc})"
            ) from exc
        unknown = [name for name in unknown if name != "argparse.Namespace"]
        for name in unknown:
            if _is_forbidden_global(name):
                raise UnsafeCheckpointError(
                    f"{path} references {name!r}, which could execute code on load; refusing it"
                )
        extra = [(_inert_class(name), name) for name in unknown]
    else:
        with path.open("rb") as handle:
            head = handle.read(_SCAN_LIMIT_BYTES)
        for name in _scan_pickle_globals(head):
            if _is_forbidden_global(name):
                raise UnsafeCheckpointError(
                    f"{path} references {name!r}, which could execute code on load; refusing it"
                )
    try:
        obj = _torch_load(path, extra)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "GLOBAL" in text or "blocked" in text or "unrecognized function" in text:
            raise UnsafeCheckpointError(
                f"{path} holds a pickle that refers to code ({text.splitlines()[0][:300]})"
            ) from exc
        raise Cut3rCheckpointError(
            f"cannot read {path}: truncated or not a torch checkpoint ({text[:300]})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise Cut3rCheckpointError(
            f"{path} is not a CUT3R checkpoint: top level is {type(obj).__name__}, expected a dict"
        )
    missing = [k for k in ("args", "model") if k not in obj]
    if missing:
        raise Cut3rCheckpointError(
            f"{path} is not a CUT3R checkpoint: missing top-level keys {missing} "
            f"(found {sorted(map(str, obj))[:10]})"
        )
    state_dict = obj["model"]
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise Cut3rCheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    return obj["args"], dict(state_dict)


def _walk_strings(obj: Any, depth: int = 0) -> Iterator[str]:
    """All strings inside plain containers / inert objects (bounded depth)."""
    if depth > 12:
        return
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _walk_strings(value, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _walk_strings(value, depth + 1)
    elif isinstance(obj, (argparse.Namespace, InertObject)):
        yield from _walk_strings(vars(obj), depth + 1)


def constructor_string_from_args(args: Any) -> str:
    """The `ARCroco3DStereo(...)` string of a checkpoint's `args` (Namespace, dict or inert)."""
    direct = getattr(args, "model", None)
    if isinstance(args, Mapping):
        direct = args.get("model")
    if isinstance(direct, str) and direct.strip().startswith(OFFICIAL_MODEL_CLASS + "("):
        return direct.strip()
    found = sorted(
        {s.strip() for s in _walk_strings(args) if s.strip().startswith(OFFICIAL_MODEL_CLASS + "(")}
    )
    if not found:
        raise Cut3rCheckpointError(
            "checkpoint 'args' holds no 'ARCroco3DStereo(...)' model string "
            f"(args is {type(args).__name__})"
        )
    if len(found) > 1:
        raise Cut3rCheckpointError(f"checkpoint 'args' holds {len(found)} different model strings")
    return found[0]


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict_strict(model: Cut3r, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy `state_dict` into `model`; any missing/unexpected/mis-shaped key is an error."""
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise Cut3rCheckpointError(f"checkpoint does not match the model: {problem}")
    non_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if non_float:
        raise Cut3rCheckpointError(f"non-floating tensors in checkpoint: {non_float[:5]}")
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True)


def load_official(path: str | Path) -> tuple[Cut3r, str]:
    """Build and load a model from an official `.pth`; returns (model, constructor string)."""
    args, state_dict = read_official_checkpoint(path)
    text = constructor_string_from_args(args)
    try:
        config = Cut3rConfig.from_constructor_string(text)
    except Cut3rConfigError as exc:
        raise Cut3rCheckpointError(f"{path}: bad model string: {exc}") from exc
    model = Cut3r(config)
    load_state_dict_strict(model, _strip_module_prefix(state_dict))
    return model.eval(), text


def save_official(model: Cut3r, path: str | Path, constructor_string: str | None = None) -> None:
    """Write an official-format `.pth` (args = Namespace(model=string), model, epoch)."""
    text = constructor_string or model.config.to_constructor_string()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    torch.save({"args": argparse.Namespace(model=text), "model": state, "epoch": 0}, Path(path))


def save_pretrained(
    model: Cut3r, out_dir: str | Path, constructor_string: str | None = None
) -> Path:
    """Write `model.safetensors` + `config.json` into `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (the DPT head aliases modules): one copy per key
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out_dir / SAFETENSORS_NAME), metadata={"format": FORMAT_NAME})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "constructor_string": constructor_string or model.config.to_constructor_string(),
    }
    (out_dir / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def read_pretrained_dir(in_dir: str | Path) -> tuple[Cut3rConfig, dict[str, torch.Tensor], str]:
    """Read our format: (config, tensors, constructor string)."""
    in_dir = Path(in_dir)
    config_path, weights_path = in_dir / CONFIG_NAME, in_dir / SAFETENSORS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise Cut3rCheckpointError(f"{in_dir} is not a CUT3R directory: {p.name} is missing")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise Cut3rCheckpointError(f"{config_path}: invalid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise Cut3rCheckpointError(f"{config_path}: not a {FORMAT_NAME} config")
    try:
        config = Cut3rConfig.from_dict(meta["config"])
    except (Cut3rConfigError, KeyError, TypeError) as exc:
        raise Cut3rCheckpointError(f"{config_path}: bad config ({exc})") from exc
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001
        raise Cut3rCheckpointError(f"{weights_path}: unreadable safetensors ({exc})") from exc
    return config, tensors, str(meta.get("constructor_string") or config.to_constructor_string())


def load_pretrained(in_dir: str | Path) -> Cut3r:
    """Load our format (directory with safetensors + config.json)."""
    config, tensors, _ = read_pretrained_dir(in_dir)
    model = Cut3r(config)
    load_state_dict_strict(model, tensors)
    return model.eval()


def load_cut3r(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Cut3r:
    """Load an official `.pth` or one of our directories, in eval mode on `device`.

    `dtype` is the backbone compute dtype (float32, bfloat16, float16); heads stay float32.
    Parameters are frozen (requires_grad False), as CUT3R is in Loc3R-VLM.
    """
    path = Path(path)
    model = load_pretrained(path) if path.is_dir() else load_official(path)[0]
    model = model.to(device).requires_grad_(False)
    if dtype != torch.float32:
        model.set_compute_dtype(dtype)
    return model
