"""What makes furniture recognisable: each kind's details, painted on its box (the furnished look).

The renderer draws every object as a box. With the textured look a brown desk and a brown table,
or a white cabinet and a white shelf, differ only in proportions: on held-out rooms most of the
embedded model's grounding misses are such confusions (desk for table, cabinet for shelf, chair
for bed; docs/experiments.md). Real furniture is told apart by its parts: a table's legs and the
shadow under its top, a desk's drawers, a shelf's boards and books, a cabinet's doors and
handles, a lamp's shade and pole, a plant's leaves and pot, a bed's pillows, a sofa's cushions,
a TV's screen, a door's handle. `furnish` paints those on the box's faces, in box coordinates
(so a detail looks the same from every view, as multi-view geometry needs); the box's geometry,
depth and object ids stay as they are. Deterministic: patterns are hashed from the object.
"""

from __future__ import annotations

import numpy as np

from loc3r.scenes import textures  # its noise; textures imports this module as a module too
from loc3r.scenes.world import COLOURS

SHADOW = 0.3  # brightness of the space under a top, seen between legs
METAL = np.array([205.0, 205.0, 210.0])  # handles
PILLOW = np.array([235.0, 235.0, 228.0])
LAMPSHADE = np.array([250.0, 238.0, 200.0])
POT = np.array([170.0, 85.0, 50.0])
LEAF_DARK = np.array([30.0, 70.0, 30.0])
SCREEN = np.array([22.0, 30.0, 52.0])
BOOKS = np.array(list(COLOURS.values()), dtype=float)
SHELF_PITCH = 0.38  # metres between a shelf's boards
DRAWER_PITCH = 0.22  # metres between a desk's drawers


def _face_frame(local: np.ndarray, face: np.ndarray, half: np.ndarray):
    """On each side face: the coordinate along it and its half width; the height from the floor."""
    along = np.where(face == 0, local[:, 1], local[:, 0])
    half_width = np.where(face == 0, half[1], half[0])
    return along, half_width, local[:, 2] + half[2]


def _between_legs(along, half_width, height, side, top: float, leg: float) -> np.ndarray:
    """The side-face points under a top of height `top`, between legs `leg` thick."""
    return side & (height < top) & (np.abs(along) < half_width - leg)


def furnish(
    kind: str, local: np.ndarray, face: np.ndarray, size, rgb: np.ndarray, seed: int
) -> np.ndarray:
    """(N, 3) `rgb` (an object's shaded colours, 0-255) with its kind's details painted on.

    local (N, 3) are the hit points in box coordinates (x along the width, y along the depth, z up
    from the centre), face (N,) the box face hit (0: x, 1: y, 2: top or bottom), size the box's
    full extents, seed the object's pattern seed. Kinds without details are returned unchanged.
    """
    out = rgb.copy()
    half = np.asarray(size, dtype=float) / 2
    along, half_width, height = _face_frame(local, face, half)
    side, top_face = face < 2, (face == 2) & (local[:, 2] > 0)
    tall = 2 * half[2]
    if kind in ("table", "desk"):
        under = _between_legs(along, half_width, height, side, tall - 0.05, 0.06)
        if kind == "desk":  # a drawer pedestal at its +x end
            pedestal = local[:, 0] > half[0] - 0.45
            under &= ~pedestal
            front = (face == 1) & pedestal & (height < tall - 0.05)
            seam = front & (np.mod(height, DRAWER_PITCH) < 0.025)
            handle = front & (np.abs(local[:, 0] - (half[0] - 0.225)) < 0.07)
            handle &= np.abs(np.mod(height, DRAWER_PITCH) - 0.12) < 0.02
            out[seam] *= 0.4
            out[handle] = METAL
        out[under] *= SHADOW
    elif kind == "chair":
        out[_between_legs(along, half_width, height, side, 0.45, 0.04)] *= SHADOW
        # above the seat only the backrest (its +y slab) is solid: the rest shows as shade
        out[(height > 0.5) & (local[:, 1] < half[1] - 0.08)] *= 0.55
    elif kind == "cabinet":
        front = face == 1
        out[front & (np.abs(local[:, 0]) < 0.02)] *= 0.35  # between its two doors
        handle = front & (np.abs(np.abs(local[:, 0]) - 0.07) < 0.025)
        out[handle & (np.abs(height - 0.62 * tall) < 0.06)] = METAL
        out[side & (height < 0.07)] *= 0.45  # plinth
    elif kind == "shelf":
        front = (face == 1) & (np.abs(along) < half_width - 0.03)
        level, within = np.divmod(height, SHELF_PITCH)
        gap = front & (within > 0.03)  # between two boards
        width = 0.06  # a book
        book = np.floor((local[:, 0] + half[0]) / width)
        key = (book * 7919 + level * 104729 + seed) % 9973
        book_top = 0.2 + 0.13 * np.mod(key * 0.6180339887, 1.0)
        books = gap & (within < book_top)
        out[gap & ~books] *= SHADOW  # the back above the books
        shade = 0.8 + 0.3 * np.mod(key * 0.7548776662, 1.0)
        colours = BOOKS[(key % len(BOOKS)).astype(int)] * shade[:, None]
        out[books] = colours[books]
        out[books & (np.mod((local[:, 0] + half[0]) / width, 1.0) < 0.25)] *= 0.6  # between two
    elif kind == "lamp":
        shade = height > 0.7 * tall
        glow = 0.9 + 0.1 * textures.fbm(along[shade], height[shade], seed, 6.0)
        out[shade] = LAMPSHADE * glow[:, None]
        stand = ~shade & side & (np.abs(along) > 0.03) & (height > 0.05)
        out[stand] *= SHADOW
    elif kind == "plant":
        pot = height < max(0.25, 0.3 * tall)
        grain = 0.9 + 0.2 * textures.fbm(along[pot], height[pot], seed, 8.0)
        out[pot] = POT * grain[:, None]
        u, v = np.where(side, along, local[:, 0]), np.where(side, height, local[:, 1])
        out[~pot & (textures.fbm(u, v, seed + 1, 14.0) < -0.05)] = LEAF_DARK  # between leaves
    elif kind == "tv":
        screen = (face == 1) & (np.abs(along) < half_width - 0.03)
        screen &= np.abs(local[:, 2]) < half[2] - 0.03
        glow = 1.0 + 0.8 * textures.fbm(along[screen], height[screen], seed, 2.0)
        out[screen] = SCREEN * glow[:, None]
    elif kind == "door":
        knob = (face == 1) & (np.abs(along - (half_width - 0.1)) < 0.06)
        out[knob & (np.abs(height - 1.0) < 0.04)] = METAL
    elif kind == "bed":
        pillow = top_face & (local[:, 1] > half[1] - 0.4) & (np.abs(local[:, 0]) < half[0] - 0.08)
        out[pillow] = PILLOW
        fold = top_face & (local[:, 1] > half[1] - 0.75) & (local[:, 1] < half[1] - 0.6)
        out[fold] *= 1.2
        out[side & (height < 0.2)] *= 0.45  # the frame under the mattress
    elif kind == "sofa":
        out[top_face & (local[:, 1] > half[1] - 0.25)] *= 0.7  # backrest
        out[top_face & (np.abs(local[:, 0]) > half[0] - 0.15)] *= 0.8  # armrests
        cushions = (face == 1) & (local[:, 1] < 0) & (height > 0.25)
        out[cushions & (np.mod(local[:, 0] + half[0], 0.6) < 0.03)] *= 0.5
        out[side & (height < 0.1)] *= 0.4
    return out  # render clips after lighting, as for every surface
