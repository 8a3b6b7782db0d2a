"""A bird's-eye map of a scene: reconstruction from above, camera path, agent, sigma, objects.

The picture reads like a map: the scene (BEV) frame's x (the first camera's viewing direction on
the floor) points right and y (left of it) points up, both in metres with tick labels and a light
grid at equal scale; a scale bar, an x/y arrow glyph and a legend explain the rest. The title is
the situation, the question and the answer. Drawn with matplotlib's Agg canvas (no display, no
pyplot state, safe to call from any thread). Text from callers is never parsed as mathtext, is
cleaned of control characters and glyphs the font lacks, and is wrapped and cut to fit.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loc3r.engine.scene_engine import AgentPose
from loc3r.engine.scene_frame import SceneView

# colours (RGB hex): overlays are strong, the reconstruction is drawn translucent beneath them
PATH_COLOUR = "#5b2a86"
AGENT_COLOUR = "#d62728"
SIGMA_COLOUR = "#ff7f0e"
TRUTH_COLOUR = "#2ca02c"
OBJECT_COLOUR = "#111111"
REFERENCE_SIZE = 640  # pixels: fonts and line widths are sized for this and scale with `size`
FIGURE_INCHES = 6.4
NICE_STEPS = (1.0, 2.0, 5.0)
DEG, SIGMA = "\u00b0", "\u03c3"


@dataclass
class BevMap:
    """A rendered map and where BEV metres land on it."""

    image: np.ndarray  # (size, size, 3) uint8 RGB
    affine: np.ndarray  # (2, 3): [col, row] = affine @ [x, y, 1], pixel centres, row 0 at the top
    x_limits: tuple[float, float]  # metres shown along x (left to right)
    y_limits: tuple[float, float]  # metres shown along y (bottom to top)
    grid_step: float  # metres between grid lines (the same on both axes)
    scale_bar_m: float  # length of the scale bar, metres
    scale_bar_px: tuple[tuple[float, float], tuple[float, float]]  # its ends, (col, row)

    def to_pixel(self, x, y) -> np.ndarray:
        """(..., 2) pixel (col, row) of BEV points (x, y) in metres."""
        xy1 = np.stack(np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float), 1.0), -1)
        return xy1 @ self.affine.T

    @property
    def pixels_per_metre(self) -> float:
        """Image pixels per metre (equal on both axes)."""
        return float(abs(self.affine[0, 0]))

    def save(self, path: str | Path) -> Path:
        """Write the map as a PNG (OpenCV); returns the path."""
        import cv2

        path = Path(path)
        bgr = np.ascontiguousarray(self.image[..., ::-1])
        try:
            ok = cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        except cv2.error as exc:  # e.g. a file name without a known image extension
            raise OSError(f"could not write {path}: {exc}") from exc
        if not ok:
            raise OSError(f"could not write {path}")
        return path


def draw_bev(
    view: SceneView | None,
    pose: AgentPose | None,
    size: int = 640,
    margin: float = 0.5,
    **extras,
) -> np.ndarray:
    """(size, size, 3) uint8 RGB map of the scene in the BEV frame (x right, y up, metres).

    Keyword extras are those of `render_bev` (objects, truth, situation, question, answer, ...).
    """
    return render_bev(view, pose, size, margin, **extras).image


def render_bev(
    view: SceneView | None,
    pose: AgentPose | None,
    size: int = 640,
    margin: float = 0.5,
    *,
    objects: Iterable[tuple[str, float, float]] | None = None,
    truth: tuple[float, float, float] | None = None,
    situation: str = "",
    question: str = "",
    answer: str = "",
    max_points: int = 20_000,
    max_height: float | None = 0.8,
) -> BevMap:
    """Draw the map; see the module docstring for what it shows.

    view: the reconstruction and camera keyframes (None or empty: nothing reconstructed yet).
    pose: the agent (position, heading, 1-sigma ellipse from sigma_x/sigma_y, heading spread).
    objects: (label, x, y) in BEV metres, where the caller knows them (synthetic rooms do).
    truth: the true agent (x, y, yaw radians), where known. margin: metres around everything.
    max_points: the reconstruction is decimated to this many points (deterministically).
    max_height: points higher than this above the first camera are left out, so that a ceiling
    does not hide the room (None keeps all); if that would leave none, all are kept.
    """
    if size < 128:
        raise ValueError(f"size={size}: the map needs at least 128 pixels")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = size / REFERENCE_SIZE
    dpi = REFERENCE_SIZE / FIGURE_INCHES * scale
    inches = (size + 1e-3) / dpi  # Agg truncates width * dpi to int pixels
    fig = Figure(figsize=(inches, inches), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)

    points, colours = _points(view, max_points, max_height)
    cameras = _cameras(view)
    agent = _finite_pose(pose)
    truth_pose = _finite_triple(truth)
    labelled = _objects(objects)

    # title block (top), legend block (bottom), the map in between
    title = _title_lines(fig, situation, question, answer, (FIGURE_INCHES - 0.3) * dpi)
    line_in = 9.0 * 1.32 / 72.0
    top_in = 0.12 + line_in * len(title) + 0.12
    for i, (text, weight) in enumerate(title):
        y = 1.0 - (0.12 + line_in * (i + 0.5)) / FIGURE_INCHES
        fig.text(
            0.5, y, text, ha="center", va="center", fontsize=9, fontweight=weight, parse_math=False
        )
    handles = _legend_handles(points, cameras, agent, truth_pose, labelled)
    rows = max(1, math.ceil(len(handles) / 2))
    bottom_in = 0.5 + rows * 0.16 + 0.1
    left_in, right_in = 0.62, 0.18
    box = (
        left_in / FIGURE_INCHES,
        bottom_in / FIGURE_INCHES,
        (FIGURE_INCHES - left_in - right_in) / FIGURE_INCHES,
        (FIGURE_INCHES - top_in - bottom_in) / FIGURE_INCHES,
    )
    ax = fig.add_axes(box)
    box_w_in = box[2] * FIGURE_INCHES
    box_h_in = box[3] * FIGURE_INCHES

    xlim, ylim = _limits(points, cameras, agent, truth_pose, labelled, margin, box_w_in / box_h_in)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    span = max(xlim[1] - xlim[0], ylim[1] - ylim[0])
    step = _nice(span / 10.0)
    from matplotlib.ticker import FormatStrFormatter, MultipleLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MultipleLocator(step))
        axis.set_major_formatter(FormatStrFormatter("%.1f" if step < 1 else "%.0f"))
    ax.tick_params(labelsize=7.5, length=3, pad=2)
    ax.grid(True, color="#b0b0b0", linewidth=0.5, alpha=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("x [m]  (forward: the first camera's viewing direction)", fontsize=8)
    ax.set_ylabel("y [m]  (left)", fontsize=8, labelpad=2)

    arrow_len = 0.07 * span
    if len(points):
        ax.scatter(
            points[:, 0],
            points[:, 1],
            c=colours,
            s=2.2,
            marker="s",
            linewidths=0,
            alpha=0.55,
            zorder=1,
            rasterized=True,
        )
    if len(cameras):
        _draw_cameras(ax, cameras, arrow_len)
    if truth_pose is not None:
        _draw_arrow(ax, truth_pose, 0.9 * arrow_len, TRUTH_COLOUR, hollow=True)
    if agent is not None:
        _draw_agent(ax, agent, 1.3 * arrow_len)
    _draw_objects(ax, labelled, _obstacles(cameras, agent, truth_pose, labelled, arrow_len))
    if not len(points):
        ax.text(
            0.5,
            0.97,
            "no reconstructed points" if len(cameras) else "no reconstruction yet",
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=10,
            color="#666666",
        )

    bar_m = _nice(0.2 * (xlim[1] - xlim[0]), down=True)
    bar = _draw_scale_bar(ax, bar_m, xlim, ylim)
    _draw_axes_glyph(ax)
    if handles:
        fig.legend(
            handles=[h for h, _ in handles],
            labels=[t for _, t in handles],
            loc="lower center",
            bbox_to_anchor=(0.5, 0.06 / FIGURE_INCHES),
            ncol=2,
            fontsize=7,
            frameon=False,
            handlelength=2.2,
            columnspacing=1.4,
            handletextpad=0.6,
            borderaxespad=0.0,
            handler_map=_arrow_handler(),
        )

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    image = np.full((size, size, 3), 255, np.uint8)
    h, w = min(size, rgba.shape[0]), min(size, rgba.shape[1])
    image[:h, :w] = rgba[:h, :w, :3]
    affine = _pixel_affine(ax, rgba.shape[0])
    bev = BevMap(image, affine, tuple(xlim), tuple(ylim), step, bar_m, ((0, 0), (0, 0)))
    ends = bev.to_pixel([bar[0], bar[1]], [bar[2], bar[2]])
    bev.scale_bar_px = (tuple(ends[0]), tuple(ends[1]))
    return bev


def _points(view, max_points: int, max_height: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) BEV x, y and (N, 3) colours in [0, 1], decimated, the highest drawn last."""
    if view is None or view.points is None or len(view.points) == 0:
        return np.zeros((0, 2)), np.zeros((0, 3))
    xyz = np.asarray(view.points, dtype=np.float64).reshape(-1, 3)
    colours = np.asarray(view.colors, dtype=np.float64).reshape(-1, 3)[: len(xyz)]
    if len(colours) < len(xyz):  # no colour: grey
        colours = np.concatenate([colours, np.full((len(xyz) - len(colours), 3), 128.0)])
    keep = np.isfinite(xyz).all(1)
    if max_height is not None:
        low = keep & (xyz[:, 2] <= max_height)
        keep = low if low.any() else keep
    xyz, colours = xyz[keep], colours[keep]
    if len(xyz) > max_points > 0:
        pick = np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
        xyz, colours = xyz[pick], colours[pick]
    order = np.argsort(xyz[:, 2], kind="stable")  # seen from above: higher points on top
    return xyz[order, :2], np.clip(colours[order] / 255.0, 0.0, 1.0)


def _cameras(view) -> np.ndarray:
    """(M, 4): x, y and the unit heading (optical axis on the floor) of each keyframe camera."""
    rows = []
    for pose in [] if view is None else view.camera_poses:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose[:3, :4]).all():
            continue
        heading = pose[:2, 2]
        norm = float(np.hypot(*heading))
        unit = heading / norm if norm > 1e-6 else np.array([np.nan, np.nan])
        rows.append([pose[0, 3], pose[1, 3], *unit])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _finite_pose(pose: AgentPose | None) -> AgentPose | None:
    if pose is None or not (math.isfinite(pose.x) and math.isfinite(pose.y)):
        return None
    return pose


def _finite_triple(truth) -> tuple[float, float, float] | None:
    if truth is None:
        return None
    values = tuple(float(v) for v in truth)
    return values if len(values) == 3 and all(math.isfinite(v) for v in values) else None


def _objects(objects) -> list[tuple[str, float, float]]:
    out = []
    for item in objects or ():
        label, x, y = item
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((clean_text(label, 40), x, y))
    return out


@functools.lru_cache(maxsize=1)
def _charmap() -> frozenset[int]:
    """Code points the default font draws (others would be blank boxes and warnings)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def clean_text(text, limit: int) -> str:
    """One line of at most `limit` characters that the font can draw (never raises).

    Control, format and separator characters become spaces, runs of spaces collapse, characters
    the font lacks (emoji, most CJK, lone surrogates) become a white square, and text longer than
    `limit` is cut with an ellipsis.
    """
    text = "" if text is None else str(text)
    text = text[: max(limit, 1) * 4]  # bound the work on huge input
    charmap = _charmap()
    missing = "\u25a1" if 0x25A1 in charmap else "?"
    out = []
    for ch in text:
        if unicodedata.category(ch)[0] in "CZ":
            out.append(" ")
        else:
            out.append(ch if ord(ch) in charmap else missing)
    text = " ".join("".join(out).split())
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "\u2026"
    return text


def _title_lines(fig, situation, question, answer, max_px: float) -> list[tuple[str, str]]:
    """(text, font weight) lines that fit `max_px`: two at most for each of the three parts."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    lines = []
    for prefix, text, weight in (
        ("Situation: ", situation, "normal"),
        ("Question: ", question, "normal"),
        ("Answer: ", answer, "bold"),
    ):
        text = clean_text(text, 400)
        if text:
            prop = FontProperties(size=9, weight=weight)

            def width(s: str, prop=prop) -> float:
                return renderer.get_text_width_height_descent(s, prop, ismath=False)[0]

            lines.extend((line, weight) for line in _wrap(prefix + text, width, max_px, 2))
    return lines or [("Bird's-eye map of the scene", "bold")]


def _wrap(text: str, width, max_px: float, max_lines: int) -> list[str]:
    """Greedy word wrap by measured width; over-long words are broken, a cut ends in an ellipsis."""

    def longest(s: str, room: float) -> int:  # longest prefix of s that fits `room`, >= 1
        low, high = 1, len(s)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if width(s[:mid]) <= room else (low, mid - 1)
        return low

    words, lines, current = text.split(" "), [], ""
    while words and len(lines) < max_lines:
        candidate = f"{current} {words[0]}" if current else words[0]
        if width(candidate) <= max_px:
            current = candidate
            words.pop(0)
        elif current:
            lines.append(current)
            current = ""
        else:  # one word wider than a line
            cut = longest(words[0], max_px)
            lines.append(words[0][:cut])
            words[0] = words[0][cut:]
    if current and len(lines) < max_lines:
        lines.append(current)
        current = ""
    if (words or current) and lines:
        ellipsis = "\u2026"
        last = lines[-1]
        lines[-1] = last[: longest(last, max_px - width(ellipsis))].rstrip() + ellipsis
    return lines


def _nice(value: float, down: bool = False) -> float:
    """The smallest 1/2/5 x 10^k at or above `value` (or the largest at or below, `down`)."""
    value = max(float(value), 1e-6)
    exponent = math.floor(math.log10(value))
    candidates = [s * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for s in NICE_STEPS]
    if down:
        return max([c for c in candidates if c <= value * (1 + 1e-9)] or [min(candidates)])
    return min([c for c in candidates if c >= value * (1 - 1e-9)] or [max(candidates)])


def _limits(points, cameras, agent, truth, objects, margin, aspect):
    """The x and y limits around everything, at least 2 m, widened to the axes' aspect (w / h)."""
    parts = []
    if len(points) >= 200:  # a few stray points do not shrink the map
        parts.append(np.percentile(points, [0.5, 99.5], axis=0))
    elif len(points):
        parts.append(points)
    if len(cameras):
        parts.append(cameras[:, :2])
    if truth is not None:
        parts.append(np.array([truth[:2]]))
    if objects:
        parts.append(np.array([[x, y] for _, x, y in objects]))
    if parts:
        everything = np.concatenate(parts)
        low, high = everything.min(0), everything.max(0)
    if agent is not None:
        centre = np.array([agent.x, agent.y])
        if not parts:
            low, high = centre.copy(), centre.copy()
        reach = max(float(np.max(high - low)), 2.0)
        sigma = np.array([agent.sigma_x, agent.sigma_y], dtype=np.float64)
        sigma = np.where(np.isfinite(sigma), np.clip(np.abs(sigma), 0.0, reach), 0.0)
        low, high = np.minimum(low, centre - sigma), np.maximum(high, centre + sigma)
    elif not parts:
        low, high = np.zeros(2), np.zeros(2)
    margin = max(float(margin), 0.0) if math.isfinite(margin) else 0.5
    low, high = low - margin, high + margin
    centre, half = (low + high) / 2, np.maximum((high - low) / 2, 1.0)
    if half[0] / half[1] < aspect:
        half[0] = half[1] * aspect
    else:
        half[1] = half[0] / aspect
    return (centre[0] - half[0], centre[0] + half[0]), (centre[1] - half[1], centre[1] + half[1])


def _stroke(width: float = 3.0):
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground="white")]


def _draw_cameras(ax, cameras: np.ndarray, arrow_len: float) -> None:
    ax.plot(
        cameras[:, 0],
        cameras[:, 1],
        color=PATH_COLOUR,
        lw=1.3,
        marker="o",
        ms=2.5,
        zorder=3,
        path_effects=_stroke(3.0),
    )
    ok = np.isfinite(cameras[:, 2])
    if ok.any():
        c = cameras[ok]
        ax.quiver(
            c[:, 0],
            c[:, 1],
            c[:, 2] * arrow_len,
            c[:, 3] * arrow_len,
            angles="xy",
            scale_units="xy",
            scale=1.0,
            color=PATH_COLOUR,
            width=0.004,
            headwidth=4.0,
            headlength=4.5,
            headaxislength=4.0,
            zorder=3.5,
        )
    ax.plot(*cameras[0, :2], marker="s", ms=7, mfc="white", mec=PATH_COLOUR, mew=1.6, zorder=4)
    if len(cameras) > 1:
        ax.plot(*cameras[-1, :2], marker="s", ms=6, color=PATH_COLOUR, mec="white", zorder=4)


def _obstacles(cameras, agent, truth, objects, arrow_len: float) -> np.ndarray:
    """(K, 2) BEV points that object labels should not cover: arrows, cameras, markers."""

    def arrow(x, y, yaw, length):
        t = np.linspace(0.0, 1.0, 12)[:, None]
        return np.array([x, y]) + t * length * np.array([math.cos(yaw), math.sin(yaw)])

    parts = [np.zeros((0, 2))]
    for x, y, hx, hy in cameras:
        parts.append(np.array([[x, y]]))
        if math.isfinite(hx):
            parts.append(arrow(x, y, math.atan2(hy, hx), arrow_len))
    if agent is not None:
        parts.append(np.array([[agent.x, agent.y]]))
        if math.isfinite(agent.yaw):
            parts.append(arrow(agent.x, agent.y, agent.yaw, 1.3 * arrow_len))
    if truth is not None:
        parts.append(arrow(*truth, 0.9 * arrow_len))
    parts.extend(np.array([[x, y]]) for _, x, y in objects)
    return np.concatenate(parts)


def _draw_objects(ax, objects, obstacles: np.ndarray) -> None:
    """A marker per object and its label, on the side where it covers the least."""
    renderer = ax.figure.canvas.get_renderer()
    blocked = ax.transData.transform(obstacles) if len(obstacles) else np.zeros((0, 2))
    placed = []
    left, right = ax.get_xlim()
    for label, x, y in objects:
        ax.plot(x, y, marker="D", ms=5, color=OBJECT_COLOUR, mec="white", mew=0.8, zorder=5)
        if not label:
            continue
        east = x > (left + right) / 2  # first try towards the middle of the map
        sides = (
            [(-1, 1), (1, 1), (-1, -1), (1, -1)] if east else [(1, 1), (-1, 1), (1, -1), (-1, -1)]
        )
        best = None
        for sx, sy in sides:
            text = ax.annotate(
                label,
                (x, y),
                xytext=(4 * sx, 3 * sy),
                textcoords="offset points",
                ha="left" if sx > 0 else "right",
                va="bottom" if sy > 0 else "top",
                fontsize=7,
                color=OBJECT_COLOUR,
                zorder=6.8,  # above the arrows: a label stays readable
                path_effects=_stroke(2.5),
                parse_math=False,
                annotation_clip=True,
            )
            text.set_clip_on(True)  # a long label ends at the map's edge
            box = text.get_window_extent(renderer)
            inside = (
                (blocked[:, 0] >= box.x0)
                & (blocked[:, 0] <= box.x1)
                & (blocked[:, 1] >= box.y0)
                & (blocked[:, 1] <= box.y1)
            )
            cost = int(inside.sum()) + 20 * sum(box.overlaps(other) for other in placed)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _draw_arrow(
    ax, pose: tuple[float, float, float], length: float, colour: str, hollow: bool = False
) -> None:
    x, y, yaw = pose
    tip = (x + length * math.cos(yaw), y + length * math.sin(yaw))
    arrow = ax.annotate(
        "",
        xy=tip,
        xytext=(x, y),
        zorder=6,
        annotation_clip=False,
        arrowprops={
            "arrowstyle": "-|>,head_length=0.55,head_width=0.28",
            "color": colour,
            "lw": 2.2,
            "shrinkA": 0,
            "shrinkB": 0,
            "mutation_scale": 14,
            "clip_on": True,
        },
    )
    arrow.arrow_patch.set_path_effects(_stroke(4.0))
    ax.plot(
        x, y, marker="o", ms=5.5, mfc="white" if hollow else colour, mec=colour, mew=1.6, zorder=6.5
    )


def _draw_agent(ax, pose: AgentPose, length: float) -> None:
    from matplotlib.patches import Ellipse, Wedge

    sx, sy = abs(float(pose.sigma_x)), abs(float(pose.sigma_y))
    if math.isfinite(sx) and math.isfinite(sy):
        ax.add_patch(
            Ellipse(
                (pose.x, pose.y),
                2 * sx,
                2 * sy,
                facecolor=(1.0, 0.5, 0.05, 0.15),
                edgecolor=SIGMA_COLOUR,
                lw=1.6,
                zorder=4,
            )
        )
    if not math.isfinite(pose.yaw):
        ax.plot(pose.x, pose.y, marker="o", ms=5.5, color=AGENT_COLOUR, mec="white", zorder=6.5)
        return
    spread = abs(float(pose.yaw_spread))
    if math.isfinite(spread) and spread > 0:
        middle = math.degrees(pose.yaw)
        half = min(math.degrees(spread), 180.0)
        ax.add_patch(
            Wedge(
                (pose.x, pose.y),
                1.1 * length,
                middle - half,
                middle + half,
                facecolor=(0.84, 0.15, 0.16, 0.2),
                edgecolor="none",
                zorder=4.5,
            )
        )
    _draw_arrow(ax, (pose.x, pose.y, pose.yaw), length, AGENT_COLOUR)


def _draw_scale_bar(ax, length: float, xlim, ylim) -> tuple[float, float, float]:
    """A bar of `length` metres at the lower right; returns (x0, x1, y) in metres."""
    from matplotlib.patches import Rectangle

    width, height = xlim[1] - xlim[0], ylim[1] - ylim[0]
    x1 = xlim[1] - 0.05 * width
    x0, y = x1 - length, ylim[0] + 0.05 * height
    pad = 0.02 * width
    ax.add_patch(
        Rectangle(
            (x0 - pad, y - pad),
            length + 2 * pad,
            0.075 * height + pad,
            facecolor="white",
            edgecolor="#999999",
            lw=0.6,
            alpha=0.9,
            zorder=7,
        )
    )
    tick = 0.012 * height
    ax.plot([x0, x1], [y, y], color="black", lw=2.5, solid_capstyle="butt", zorder=8)
    ax.plot(
        [x0, x0, np.nan, x1, x1],
        [y - tick, y + tick, np.nan, y - tick, y + tick],
        color="black",
        lw=1.0,
        zorder=8,
    )
    label = f"{length:g} m"
    ax.text(
        (x0 + x1) / 2, y + 0.022 * height, label, ha="center", va="bottom", fontsize=7.5, zorder=8
    )
    return x0, x1, y


def _draw_axes_glyph(ax) -> None:
    """The x and y arrows (the BEV axes) at the lower left corner, in axes fractions."""
    from matplotlib.patches import FancyBboxPatch

    bbox = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches()
    box_w, box_h = bbox.width * fig_w, bbox.height * fig_h  # inches
    length = 0.42
    ox, oy = 0.03 + 0.1 / box_w, 0.03 + 0.1 / box_h
    dx, dy = length / box_w, length / box_h
    ax.add_patch(
        FancyBboxPatch(
            (ox - 0.08 / box_w, oy - 0.08 / box_h),
            dx + 0.3 / box_w,
            dy + 0.32 / box_h,
            boxstyle="round,pad=0.0",
            transform=ax.transAxes,
            facecolor="white",
            edgecolor="#999999",
            lw=0.6,
            alpha=0.9,
            zorder=7,
        )
    )
    for (tx, ty), name in (((ox + dx, oy), "x"), ((ox, oy + dy), "y")):
        ax.annotate(
            "",
            xy=(tx, ty),
            xytext=(ox, oy),
            xycoords="axes fraction",
            zorder=8,
            arrowprops={
                "arrowstyle": "-|>",
                "color": "black",
                "lw": 1.3,
                "shrinkA": 0,
                "shrinkB": 0,
                "mutation_scale": 10,
            },
        )
        offset = (0.07 / box_w, 0.0) if name == "x" else (0.0, 0.07 / box_h)
        ax.text(
            tx + offset[0],
            ty + offset[1],
            name,
            transform=ax.transAxes,
            fontsize=8,
            fontweight="bold",
            ha="left" if name == "x" else "center",
            va="center" if name == "x" else "bottom",
            zorder=8,
        )


def _arrow_handler():
    from matplotlib.legend_handler import HandlerPatch
    from matplotlib.patches import FancyArrow

    def make(legend, orig_handle, xdescent, ydescent, width, height, fontsize):
        return FancyArrow(
            -xdescent,
            height / 2 - ydescent,
            width,
            0.0,
            width=0.18 * height,
            head_width=0.75 * height,
            head_length=0.35 * width,
            length_includes_head=True,
        )

    return {FancyArrow: HandlerPatch(patch_func=make)}


def _legend_handles(points, cameras, agent, truth, objects) -> list[tuple[object, str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrow, Patch

    def arrow(colour, hollow=False):
        return FancyArrow(
            0, 0, 1, 0, facecolor="white" if hollow else colour, edgecolor=colour, lw=1.0
        )

    handles = []
    if len(points):
        handles.append(
            (
                Line2D([], [], ls="none", marker="s", ms=4, color="#9a9a9a"),
                f"reconstructed points, from above ({len(points):,})",
            )
        )
    if len(cameras):
        handles.append(
            (
                Line2D([], [], color=PATH_COLOUR, lw=1.3, marker="o", ms=2.5),
                f"camera path ({len(cameras)} keyframes)",
            )
        )
        handles.append((arrow(PATH_COLOUR), "camera heading at each keyframe"))
        handles.append(
            (
                Line2D([], [], ls="none", marker="s", ms=6, mfc="white", mec=PATH_COLOUR, mew=1.4),
                "first camera (origin)",
            )
        )
        if len(cameras) > 1:
            handles.append(
                (Line2D([], [], ls="none", marker="s", ms=5.5, color=PATH_COLOUR), "latest camera")
            )
    if agent is not None:
        heading = (
            f", heading {math.degrees(agent.yaw):.0f}{DEG}" if math.isfinite(agent.yaw) else ""
        )
        handles.append(
            (arrow(AGENT_COLOUR), f"agent: x {agent.x:.2f} m, y {agent.y:.2f} m{heading}")
        )
        if math.isfinite(agent.sigma_x) and math.isfinite(agent.sigma_y):
            handles.append(
                (
                    Patch(facecolor=(1.0, 0.5, 0.05, 0.15), edgecolor=SIGMA_COLOUR, lw=1.4),
                    f"1{SIGMA} position: {SIGMA}x {abs(agent.sigma_x):.2f} m, "
                    f"{SIGMA}y {abs(agent.sigma_y):.2f} m",
                )
            )
        if math.isfinite(agent.yaw_spread) and agent.yaw_spread > 0 and math.isfinite(agent.yaw):
            spread = min(math.degrees(abs(agent.yaw_spread)), 180.0)
            wedge = Patch(facecolor=(0.84, 0.15, 0.16, 0.2), edgecolor="none")
            handles.append((wedge, f"1{SIGMA} heading: \u00b1{spread:.0f}{DEG}"))
    if truth is not None:
        handles.append(
            (
                arrow(TRUTH_COLOUR, hollow=True),
                f"true pose: x {truth[0]:.2f} m, y {truth[1]:.2f} m, "
                f"heading {math.degrees(truth[2]):.0f}{DEG}",
            )
        )
    if objects:
        handles.append(
            (
                Line2D([], [], ls="none", marker="D", ms=4.5, color=OBJECT_COLOUR),
                "objects (known positions)",
            )
        )
    return handles


def _pixel_affine(ax, height: int) -> np.ndarray:
    """(2, 3) map from BEV metres to image (col, row), from the axes' data transform."""
    origin, ex, ey = ax.transData.transform([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    col = [ex[0] - origin[0], ey[0] - origin[0], origin[0] - 0.5]
    row = [-(ex[1] - origin[1]), -(ey[1] - origin[1]), height - origin[1] - 0.5]
    return np.array([col, row], dtype=np.float64)


def write_bev_png(
    path: str | Path, view: SceneView | None, pose: AgentPose | None, size: int = 960, **extras
) -> BevMap:
    """Render (see `render_bev`) and save as a PNG; returns the map."""
    bev = render_bev(view, pose, size, **extras)
    bev.save(path)
    return bev


__all__: Sequence[str] = ("BevMap", "clean_text", "draw_bev", "render_bev", "write_bev_png")
