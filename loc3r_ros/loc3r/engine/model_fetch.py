"""Model weights by name: Hugging Face Hub repos and plain URLs, pinned, verified, cached.

A *source* is a local path, a hub repo (`lmms-lab/LLaVA-Video-7B-Qwen2`, optionally
`@REVISION`, or `REPO/FILE.pth` for one file of a repo), or an `https://` URL. Hub files come
through huggingface_hub (its cache, HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, resumable
`.incomplete` files, progress bars), only the files a bundle needs, at a pinned commit; each is
verified against the hub's own hash (the blob's name in the cache is its ETag: the LFS sha256,
or the git blob sha1 of a small file). A URL is downloaded with HTTP Range resumption into
`<cache>/urls/` and checked against a sha256 from the lock file or the command line, recorded on
first use when none is known. With HF_HUB_OFFLINE=1 (or LOC3R_OFFLINE=1) nothing is fetched: a
warm cache just works, a cold one is an error naming every missing file and the command that
fetches it. The lock file (config/models.lock.json) pins revisions and checksums per model name.
Nothing from a downloaded file is executed (checkpoints load with weights_only / safetensors).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loc3r.errors import Loc3rError

HEX40, HEX64 = re.compile(r"^[0-9a-f]{40}$"), re.compile(r"^[0-9a-f]{64}$")
LOCK_FORMAT = "loc3r_models_lock"
LOCK_NAME = "models.lock.json"
# what a bundle needs from each kind of hub repo (optional files are skipped when absent)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json")  # fmt: skip
LLAVA_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
LLAVA_REQUIRED = ("config.json", "tokenizer_config.json")
SIGLIP_FILES = ("config.json", "preprocessor_config.json")
SIGLIP_REQUIRED = ("config.json",)
LOC3R_VLM_FILES = ("config.json", *TOKENIZER_FILES)
LOC3R_VLM_REQUIRED = ("config.json",)
CHUNK = 1 << 20


class FetchError(Loc3rError):
    """A model could not be fetched or verified (the message says what and what to do)."""


@dataclass
class Source:
    """Where a model part comes from."""

    kind: str  # "path" | "hub" | "url"
    location: str  # path, repo id, or URL
    revision: str | None = None  # hub: branch, tag or commit (pinned to a commit)
    filename: str | None = None  # hub: one file of the repo (e.g. a .pth checkpoint)
    sha256: str | None = None  # url: expected content hash

    def to_lock(self) -> dict:
        """The lock file's record of this source."""
        if self.kind == "hub":
            out = {"repo": self.location, "revision": self.revision}
            return out | ({"file": self.filename} if self.filename else {})
        if self.kind == "url":
            return {"url": self.location, "sha256": self.sha256}
        return {"path": self.location}

    @classmethod
    def from_lock(cls, record: dict) -> Source:
        """A source from its lock record."""
        if "repo" in record:
            return cls("hub", record["repo"], record.get("revision"), record.get("file"))
        if "url" in record:
            return cls("url", record["url"], sha256=record.get("sha256"))
        if "path" in record:
            return cls("path", record["path"])
        raise FetchError(f"lock record {record} has no repo, url or path")


def parse_source(text: str, *, single_file: bool = False) -> Source:
    """A source from a command-line value (see the module docstring).

    `single_file`: a hub value names one file (`org/name/file.pth[@rev]`), as a CUT3R checkpoint.
    """
    text = text.strip()
    if not text:
        raise FetchError("empty model source")
    if text.startswith(("https://", "http://")):
        return Source("url", text)
    if Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~")):
        return Source("path", str(Path(text).expanduser()))
    spec, _, revision = text.partition("@")
    parts = spec.split("/")
    if single_file and len(parts) >= 3:
        return Source("hub", "/".join(parts[:2]), revision or None, "/".join(parts[2:]))
    if len(parts) != 2 or not all(re.fullmatch(r"[\w.\-]+", p) for p in parts):
        raise FetchError(
            f"{text!r} is neither an existing path, a hub repo (org/name[@revision]) nor a URL"
        )
    return Source("hub", spec, revision or None)


def offline() -> bool:
    """HF_HUB_OFFLINE=1 or LOC3R_OFFLINE=1 (read at call time)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in
               ("HF_HUB_OFFLINE", "LOC3R_OFFLINE"))  # fmt: skip


def hub_cache_dir() -> Path:
    """huggingface_hub's cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def loc3r_cache_dir() -> Path:
    """Where URL downloads and built bundles live: LOC3R_HOME, else ~/.cache/loc3r."""
    return Path(os.environ.get("LOC3R_HOME") or Path.home() / ".cache" / "loc3r")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (the hub's ETag of a file not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 (git's id)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """The sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_hub_file(path: Path) -> None:
    """Check a cached hub file against its ETag (the blob's name); a mismatch removes it."""
    blob = Path(os.path.realpath(path))
    etag = blob.name
    if HEX64.match(etag):
        actual, kind = sha256_of(blob), "sha256"
    elif HEX40.match(etag):
        actual, kind = git_blob_sha1(blob), "git sha1"
    else:
        raise FetchError(f"{path}: its cache entry has no hub hash to verify against ({etag!r})")
    if actual != etag:
        blob.unlink(missing_ok=True)
        Path(path).unlink(missing_ok=True)
        raise FetchError(
            f"{path.name}: {kind} {actual[:12]}... does not match the hub's {etag[:12]}... "
            "(corrupted or truncated download, removed from the cache; run the command again)"
        )


def _hub_kwargs(source: Source) -> dict:
    kwargs = {"repo_id": source.location, "cache_dir": str(hub_cache_dir())}
    if os.environ.get("HF_ENDPOINT"):
        kwargs["endpoint"] = os.environ["HF_ENDPOINT"]
    return kwargs


def resolve_revision(source: Source, probe: str = "config.json") -> str:
    """The commit a hub source's revision points at (a commit is kept as it is)."""
    if source.revision and HEX40.match(source.revision):
        return source.revision
    if offline():
        raise FetchError(
            f"{source.location}: no pinned commit in the lock file and offline "
            "(HF_HUB_OFFLINE=1): fetch it once online to pin it"
        )
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    kwargs = _hub_kwargs(source)
    url = hf_hub_url(kwargs["repo_id"], probe, revision=source.revision or "main",
                     endpoint=kwargs.get("endpoint"))  # fmt: skip
    try:
        commit = get_hf_file_metadata(url, timeout=30).commit_hash
    except Exception as exc:  # huggingface_hub and httpx raise many types
        hint = ""
        if "404" in str(exc) or "401" in str(exc) or "NotFound" in type(exc).__name__:
            hint = " (no such repo, revision or file; for a gated or private repo set HF_TOKEN)"
        raise FetchError(f"{source.location}: cannot resolve {source.revision or 'main'}: "
                         f"{_reason(exc)}{hint}") from exc  # fmt: skip
    if not commit:
        raise FetchError(f"{source.location}: the hub did not say which commit it serves")
    return commit


def fetch_hub_files(
    source: Source,
    files: tuple[str, ...],
    required: tuple[str, ...],
    fetch_command: str,
    weights: bool = False,
) -> Path:
    """Download (or find in the cache) `files` of a pinned hub repo; verify; return the folder.

    `weights`: also the safetensors weights, sharded (model.safetensors.index.json and the
    shards it names) or single (model.safetensors). Missing optional files are skipped; a
    missing required file, a 404, a timeout or a bad hash is a FetchError. Offline, every file
    that is not cached is named, with `fetch_command`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    local = offline()
    kwargs = _hub_kwargs(source) | {"revision": source.revision, "local_files_only": local}
    where = f"{source.location}@{source.revision}"
    missing: list[str] = []
    paths: list[Path] = []

    def get(name: str, must: bool) -> Path | None:
        try:
            path = Path(hf_hub_download(filename=name, **kwargs))
        except LocalEntryNotFoundError:
            if must:
                missing.append(name)
            return None
        except EntryNotFoundError:
            if must:
                raise FetchError(f"{where}: no {name} in the repo") from None
            return None
        except Exception as exc:  # huggingface_hub and httpx raise many types
            raise FetchError(f"{where}: {name}: {_reason(exc)}") from exc
        verify_hub_file(path)
        paths.append(path)
        return path

    for name in files:
        get(name, name in required)
    if weights:
        index = get("model.safetensors.index.json", must=False)
        if index is not None:
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                get(shard, must=True)
        elif get("model.safetensors", must=False) is None:
            if not local:
                raise FetchError(f"{where}: no model.safetensors(.index.json) in the repo")
            missing.append("model.safetensors.index.json (or model.safetensors) and its shards")
    if missing:
        listed = "\n  ".join(f"{where}: {m}" for m in missing)
        raise FetchError(f"offline and not in the cache ({hub_cache_dir()}):\n  {listed}\n"
                         f"fetch them once online: {fetch_command}")  # fmt: skip
    if not paths:
        raise FetchError(f"{where}: none of {files} was found")
    return paths[0].parent


def fetch_hub_file(source: Source, fetch_command: str) -> Path:
    """One file of a pinned hub repo (e.g. a .pth checkpoint), verified."""
    folder = fetch_hub_files(source, (source.filename,), (source.filename,), fetch_command)
    return folder / source.filename


def fetch_url(source: Source, fetch_command: str, timeout_s: float = 60.0) -> Path:
    """Download a URL (resuming a partial download) into the cache; check its sha256.

    Sets source.sha256 when none was given (recorded on first use). Raises FetchError for a
    404, a timeout, a full disk, a wrong or truncated file (a wrong file is removed).
    """
    key = hashlib.sha256(source.location.encode()).hexdigest()[:16]
    name = Path(urllib.request.url2pathname(source.location.split("?")[0])).name or "download"
    final = loc3r_cache_dir() / "urls" / key / name
    partial = final.with_name(final.name + ".part")
    if final.exists():
        _check_sha(final, source)
        return final
    if offline():
        raise FetchError(f"offline and not in the cache: {source.location} (expected at "
                         f"{final})\nfetch it once online: {fetch_command}")  # fmt: skip
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(source.location, partial, timeout_s)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{source.location}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise FetchError(f"{source.location}: {_reason(exc)} (the partial download is kept "
                         "and resumes next time)") from exc  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FetchError(f"disk full while writing {partial}: free space and run again "
                             "(the download resumes)") from exc  # fmt: skip
        raise FetchError(f"{source.location}: {exc}") from exc
    try:
        _check_sha(partial, source)
    except FetchError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, final)
    return final


def _check_sha(path: Path, source: Source) -> None:
    actual = sha256_of(path)
    if source.sha256 is None:
        source.sha256 = actual  # recorded on first use
    elif actual != source.sha256.lower():
        raise FetchError(f"{source.location}: sha256 {actual} does not match the expected "
                         f"{source.sha256} (wrong or corrupted file)")  # fmt: skip


def _download(url: str, partial: Path, timeout_s: float) -> None:
    """GET url into `partial`, resuming from its size with a Range request; tqdm progress."""
    from tqdm import tqdm

    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http/s)
        if start and response.status != 206:  # the server ignored the range: start again
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        mode = "ab" if start else "wb"
        written = start
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=partial.name[:-5])
        with open(partial, mode) as out, bar:
            while block := response.read(CHUNK):
                out.write(block)
                written += len(block)
                bar.update(len(block))
    if total is not None and written != total:
        raise urllib.error.URLError(f"connection closed after {written} of {total} bytes")


def _reason(exc: BaseException) -> str:
    """A short reason for a network error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, TimeoutError) or "timed out" in text.lower():
        return f"timed out ({text})"
    return text


# --- the lock file ------------------------------------------------------------------------------
def default_lock_path() -> Path:
    """LOC3R_MODELS_LOCK, else config/models.lock.json of the source tree or of the install."""
    if os.environ.get("LOC3R_MODELS_LOCK"):
        return Path(os.environ["LOC3R_MODELS_LOCK"])
    here = Path(__file__).resolve()
    source_tree = here.parents[2] / "config" / LOCK_NAME  # loc3r_ros/config
    installed = here.parents[5] / "share" / "loc3r_ros" / "config" / LOCK_NAME  # colcon install
    return source_tree if source_tree.exists() or not installed.exists() else installed


def read_lock(path: str | Path | None = None) -> dict:
    """The lock file (an empty one when it does not exist)."""
    path = Path(path) if path else default_lock_path()
    if not path.exists():
        return {"format": LOCK_FORMAT, "models": {}}
    try:
        lock = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FetchError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(lock, dict) or lock.get("format") != LOCK_FORMAT:
        raise FetchError(f"{path}: not a {LOCK_FORMAT} file")
    lock.setdefault("models", {})
    return lock


def write_lock(lock: dict, path: str | Path | None = None) -> None:
    """Write the lock file atomically."""
    path = Path(path) if path else default_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(lock, indent=2) + "\n")
    os.replace(temporary, path)


def fetch(source: Source, kind: str, fetch_command: str) -> Path:
    """A local path for a source: a file (CUT3R, a URL) or a folder (hub repos of models)."""
    if source.kind == "path":
        path = Path(source.location)
        if not path.exists():
            raise FetchError(f"no such file or folder: {path}")
        return path
    if source.kind == "url":
        return fetch_url(source, fetch_command)
    source.revision = resolve_revision(source, probe=source.filename or "config.json")
    if source.filename:
        return fetch_hub_file(source, fetch_command)
    files, required = {
        "llava_video": (LLAVA_FILES, LLAVA_REQUIRED),
        "vision_tower": (SIGLIP_FILES, SIGLIP_REQUIRED),  # its weights are in LLaVA-Video's
        "loc3r_vlm": (LOC3R_VLM_FILES, LOC3R_VLM_REQUIRED),
    }[kind]
    weights = kind != "vision_tower"
    return fetch_hub_files(source, files, required, fetch_command, weights=weights)


def remove_tree(path: Path) -> None:
    """Remove a folder (a half-built bundle), ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)
