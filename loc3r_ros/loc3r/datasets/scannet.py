"""ScanNet scenes exported by ScanNet's SensReader (`export_sampled_data`) -> our format.

Input layout (one scan folder, e.g. `scans/scene0000_00/`)::

    <scene>/color/<i>.jpg                    colour, usually 1296x968
    <scene>/depth/<i>.png                    uint16 millimetres, usually 640x480
    <scene>/pose/<i>.txt                     4x4 camera-to-world; lost tracking = -inf/inf/nan
    <scene>/intrinsic/intrinsic_color.txt    4x4 (K in the top-left 3x3)
    <scene>/intrinsic/intrinsic_depth.txt    4x4
    <scene>/<scene>.txt                      optional meta: `axisAlignment = <16 floats>`, ...
    <scene>/<scene>_vh_clean_2.ply           optional mesh (its vertex bounding-box centre is
                                             the origin of SQA3D's situation positions)

`<i>` are the exported frame numbers (multiples of the export's frame skip); they are sorted
numerically. Frames with a non-finite pose are skipped and counted. When the axis alignment is
present it is applied to the poses (world = axis-aligned ScanNet frame: z up, walls along x/y);
without it the world is ScanNet's raw reconstruction frame (also z up). Colour is resized to the
depth resolution (or `image_size`) and K scaled accordingly; depth is resized with nearest
neighbour when the sizes differ. ScanNet's depth is registered to the colour camera (the two
intrinsics describe the same field of view at different resolutions), so the scaled colour K is
written as the frames' K and the original depth K is kept in scene.json for reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from loc3r.datasets.format import DatasetError, SceneWriter

_NUMBER = re.compile(r"^\d+$")
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class ScanNetReport:
    """What a conversion did."""

    scene_id: str
    scene_dir: Path
    frames_written: int
    invalid_poses_skipped: int
    axis_aligned: bool
    raw_bbox_center: list[float] | None  # None when the mesh was not found


def read_scannet_meta(path: str | Path) -> dict[str, str]:
    """`key = value` lines of ScanNet's `<scene>.txt`."""
    meta = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    return meta


def axis_alignment(meta: dict[str, str], where: str = "meta") -> np.ndarray | None:
    """The 4x4 `axisAlignment` matrix (row-major), or None when absent."""
    if "axisAlignment" not in meta:
        return None
    try:
        values = [float(v) for v in meta["axisAlignment"].split()]
    except ValueError as exc:
        raise DatasetError(f"{where}: axisAlignment is not 16 numbers") from exc
    if len(values) != 16 or not np.isfinite(values).all():
        raise DatasetError(f"{where}: axisAlignment must be 16 finite numbers, got {len(values)}")
    matrix = np.array(values).reshape(4, 4)
    rotation = matrix[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or not np.allclose(
        matrix[3], [0, 0, 0, 1]
    ):
        raise DatasetError(f"{where}: axisAlignment is not a rigid transform")
    return matrix


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """(N, 3) float64 vertex positions of a PLY file (ascii or binary, vertex element first)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise DatasetError(f"{path}: not a PLY file")
    body_start = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, props, element = None, None, [], None
    for line in header:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            if element is None and words[1] != "vertex":
                raise DatasetError(f"{path}: the vertex element must come first")
            element = words[1]
            if element == "vertex":
                count = int(words[2])
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list":
                raise DatasetError(f"{path}: list properties on vertices are not supported")
            if words[1] not in _PLY_TYPES:
                raise DatasetError(f"{path}: unknown PLY type {words[1]!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    names = [name for name, _ in props]
    if count is None or not {"x", "y", "z"} <= set(names):
        raise DatasetError(f"{path}: no vertex element with x, y, z")
    if fmt == "ascii":
        rows = data[body_start:].decode("ascii").splitlines()[:count]
        table = np.array([[float(v) for v in row.split()[: len(props)]] for row in rows])
        if table.shape != (count, len(props)):
            raise DatasetError(f"{path}: truncated vertex list")
        return table[:, [names.index(k) for k in "xyz"]].astype(np.float64)
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise DatasetError(f"{path}: unsupported PLY format {fmt!r}")
    order = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(name, order + code) for name, code in props])
    if len(data) - body_start < dtype.itemsize * count:
        raise DatasetError(f"{path}: truncated vertex data")
    vertices = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
    return np.stack([vertices[k].astype(np.float64) for k in "xyz"], axis=1)


def _intrinsics(path: Path) -> np.ndarray:
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if matrix.shape not in ((4, 4), (3, 3)) or not np.isfinite(matrix).all():
        raise DatasetError(f"{path}: expected a 4x4 (or 3x3) intrinsics matrix")
    return matrix[:3, :3].copy()


def _pose(path: Path) -> np.ndarray:
    try:
        pose = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if pose.shape != (4, 4):
        raise DatasetError(f"{path}: expected a 4x4 pose, got shape {pose.shape}")
    return pose


def convert_scannet_scene(
    src: str | Path,
    dst_root: str | Path,
    scene_id: str | None = None,
    stride: int = 1,
    image_size: tuple[int, int] | None = None,
    *,
    image_ext: str = "jpg",
    overwrite: bool = False,
) -> ScanNetReport:
    """Convert one exported ScanNet scan folder into `<dst_root>/scenes/<scene_id>`.

    stride keeps every stride-th exported frame (before invalid poses are dropped);
    image_size is (width, height) of the written frames, default the depth resolution.
    """
    src = Path(src)
    scene_id = scene_id or src.name
    if not isinstance(stride, int) or stride < 1:
        raise DatasetError(f"stride must be a positive integer, got {stride!r}")
    for sub in ("color", "depth", "pose", "intrinsic"):
        if not (src / sub).is_dir():
            raise DatasetError(f"{src}: no {sub}/ folder (not a SensReader export?)")
    K_color = _intrinsics(src / "intrinsic" / "intrinsic_color.txt")  # noqa: N806
    depth_k_path = src / "intrinsic" / "intrinsic_depth.txt"
    K_depth = _intrinsics(depth_k_path) if depth_k_path.is_file() else None  # noqa: N806

    meta_path = src / f"{src.name}.txt"
    meta = read_scannet_meta(meta_path) if meta_path.is_file() else {}
    alignment = axis_alignment(meta, str(meta_path))
    world_from_raw = np.eye(4) if alignment is None else alignment
    mesh_path = src / f"{src.name}_vh_clean_2.ply"
    center = None
    if mesh_path.is_file():
        vertices = read_ply_vertices(mesh_path)
        if len(vertices):
            center = ((vertices.max(0) + vertices.min(0)) / 2).tolist()

    numbers = sorted(int(p.stem) for p in (src / "color").glob("*.jpg") if _NUMBER.match(p.stem))
    if not numbers:
        raise DatasetError(f"{src / 'color'}: no <number>.jpg frames")
    numbers = numbers[::stride]

    source = {
        "dataset": "scannet",
        "scan": src.name,
        "scene_type": meta.get("sceneType"),
        "axis_aligned": alignment is not None,
        "world_from_raw": world_from_raw.tolist(),  # poses here = world_from_raw @ ScanNet pose
        "raw_bbox_center": center,  # centre of the raw mesh's vertex bounding box (SQA3D origin)
        "color_intrinsics": K_color.tolist(),
        "depth_intrinsics": None if K_depth is None else K_depth.tolist(),
        "stride": stride,
        "source_frames": [],  # filled below; the writer holds this dict until close()
        "invalid_poses_skipped": 0,
    }
    writer = None
    skipped = 0
    for number in numbers:
        pose = _pose(src / "pose" / f"{number}.txt")
        if not np.isfinite(pose).all():
            skipped += 1
            continue
        color_path, depth_path = src / "color" / f"{number}.jpg", src / "depth" / f"{number}.png"
        bgr = cv2.imread(str(color_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{color_path}: unreadable image")
        depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise DatasetError(f"{depth_path}: missing or unreadable depth")
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise DatasetError(f"{depth_path}: expected single-channel uint16 millimetres")
        width, height = image_size or (depth.shape[1], depth.shape[0])
        if writer is None:
            scale = np.diag([width / bgr.shape[1], height / bgr.shape[0], 1.0])
            source["color_size"] = [bgr.shape[1], bgr.shape[0]]
            source["depth_size"] = [depth.shape[1], depth.shape[0]]
            writer = SceneWriter(
                dst_root,
                scene_id,
                scale @ K_color,
                up=(0.0, 0.0, 1.0),
                world_frame="scannet_axis_aligned" if alignment is not None else "scannet_raw",
                image_ext=image_ext,
                source=source,
                overwrite=overwrite,
            )
        if bgr.shape[:2] != (height, width):
            shrink = width < bgr.shape[1] and height < bgr.shape[0]
            method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, (width, height), interpolation=method)
        if depth.shape != (height, width):
            depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        writer.add(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth, world_from_raw @ pose)
        source["source_frames"].append(number)
    if writer is None:
        raise DatasetError(f"{src}: no frame with a valid pose ({skipped} skipped)")
    source["invalid_poses_skipped"] = skipped
    scene_dir = writer.close()
    return ScanNetReport(
        scene_id, scene_dir, len(source["source_frames"]), skipped, alignment is not None, center
    )
