"""Real video clips, fetched from Debian, and what the embedded model makes of them.

    python -m loc3r.eval.real_clips [--dest .deps/real_clips] [--model DIR] [--out report.json]

The clips are OpenCV's sample videos as Debian ships them in `opencv-doc` (pinned version and
sha256; a download of ~96 MB, once): vtest.avi (a static camera watching people walk: what a
camera that never moves must look like), Megamind.avi and Megamind_bugy.avi (a film clip, and a
damaged copy of it), tree.avi, box.mp4 and cup.mp4 (hand-held objects). For each clip the
command reports what was read (loc3r.video_io), the domain check's verdict and the model's
confidence on a question, and, for the static camera, how far the camera path moves through the
scene engine (motion honesty: it should not).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

DEB_URL = "http://deb.debian.org/debian/pool/main/o/opencv/opencv-doc_4.6.0%2bdfsg-12_all.deb"
DEB_SHA256 = "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"
CLIPS = {  # clip name -> member of the package's data archive
    "vtest.avi": "usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "Megamind.avi": "usr/share/doc/opencv-doc/examples/data/Megamind.avi",
    "Megamind_bugy.avi": "usr/share/doc/opencv-doc/examples/data/Megamind_bugy.avi",
    "tree.avi": "usr/share/doc/opencv-doc/examples/data/tree.avi",
    "box.mp4": "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
    "cup.mp4": "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
}
STATIC_CLIP = "vtest.avi"
DEFAULT_DEST = Path(__file__).resolve().parents[3] / ".deps" / "real_clips"


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an `ar` archive (a .deb is one): name -> content."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with !<arch>)")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def extract_clips(deb: bytes, dest: Path, clips: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the clips of a .deb's data archive to `dest` (gunzipping .gz members)."""
    clips = CLIPS if clips is None else clips
    archive = next((v for k, v in ar_members(deb).items() if k.startswith("data.tar")), None)
    if archive is None:
        raise ValueError("the .deb has no data.tar member")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {member: name for name, member in clips.items()}
    found: dict[str, Path] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for info in tar:
            member = info.name.removeprefix("./")
            if member not in wanted or not info.isfile():
                continue
            content = tar.extractfile(info).read()
            if member.endswith(".gz"):
                content = gzip.decompress(content)
            path = dest / wanted[member]
            path.write_bytes(content)
            found[wanted[member]] = path
    missing = sorted(set(clips) - set(found))
    if missing:
        raise ValueError(f"the .deb lacks {missing}")
    return found


def fetch_real_clips(dest: Path = DEFAULT_DEST) -> dict[str, Path]:
    """The clips in `dest`, downloading and extracting the pinned package when one is missing."""
    paths = {name: dest / name for name in CLIPS}
    if all(p.exists() for p in paths.values()):
        return paths
    from loc3r.engine.model_fetch import Source, fetch_url

    source = Source("url", DEB_URL, sha256=DEB_SHA256)
    deb = fetch_url(source, "python -m loc3r.eval.real_clips").read_bytes()
    return extract_clips(deb, dest)


def static_drift(bundle, frames: list[np.ndarray]) -> dict:
    """The camera path of a clip streamed through the scene engine (a keyframe per second)."""
    from loc3r.engine import EngineConfig, KeyframeConfig, SceneEngine

    every = KeyframeConfig(max_interval_s=1.0, duplicate_change=0.0)
    engine = SceneEngine(EngineConfig(keyframes=every), model=None)
    engine.set_models(bundle.model, bundle.perception, bundle.num_query_frames)
    try:
        for i, image in enumerate(frames):
            engine.add_frame(image, i * 500_000_000)  # 2 Hz
        engine.worker.wait_idle(600.0)
        centres = np.array([pose[:3, 3] for pose in engine.scene_view().camera_poses])
    finally:
        engine.close()
    return {
        "keyframes": len(centres),
        "max_drift_m": round(float(np.linalg.norm(centres - centres[0], axis=1).max()), 4),
    }


def run(args: argparse.Namespace) -> dict:
    """Read every clip, ask the model about it, and measure the static camera's drift."""
    from loc3r.cli import main as cli_main
    from loc3r.engine.models import load_bundle
    from loc3r.video_io import read_frames

    paths = fetch_real_clips(Path(args.dest))
    report: dict = {"clips": {}}
    for name, path in paths.items():
        argv = ["ask", str(path), "--question", "What is on my left?",
                "--situation", "I am standing in the room"]  # fmt: skip
        if args.model:
            argv += ["--model", args.model]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):  # the CLI's JSON, exactly as a user sees it
            code = cli_main(argv)
        out = json.loads(buffer.getvalue())
        report["clips"][name] = (
            {"input": out["input"], "confidence": out["confidence"], "answer": out["answer"]}
            if code == 0
            else {"error": out.get("error")}
        )
    bundle = load_bundle(args.model or None)
    static = [r.image for r in read_frames(paths[STATIC_CLIP], max_frames=24).frames]
    report["static_camera"] = {"clip": STATIC_CLIP, **static_drift(bundle, static)}
    verdicts = [c["confidence"]["in_domain"] for c in report["clips"].values() if "confidence" in c]
    report["flagged_out_of_domain"] = f"{verdicts.count(False)} of {len(verdicts)}"
    return report


def main(argv: list[str] | None = None) -> int:
    """Print (and with --out, write) the report."""
    parser = argparse.ArgumentParser(
        prog="python -m loc3r.eval.real_clips", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="where the clips are kept")
    parser.add_argument("--model", default="", help="bundle directory (default: embedded)")
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except (OSError, ValueError) as exc:
        print(f"loc3r.eval.real_clips: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
