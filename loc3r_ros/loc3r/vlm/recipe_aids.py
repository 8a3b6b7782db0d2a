"""The shipped recipe's aids, wired into Loc3R-VLM (ours, not in the paper).

loc3r_vlm keeps the paper's model (f_cam, the layout head, f_pos, f_ori, the prompt). The
embedded bundle's recipe adds modules that a tiny LM trained from scratch needs, each in its own
file: an input aid that tells each patch its 3D point (point_embedding) and read-out aids that
read the video's patch tokens through the layout head (position_pointer, heading_pointer,
egocentric_readout). This module builds them from Loc3rVLMConfig, checking what each needs
(`add_aids`), and runs the read-out aids where the model calls them:

- `point_pose`: the pointers' pose, at inference (Loc3rVLM.read_pose) and in training;
- `point_in_rows` (training): the pointers over packed rows, with their grounding losses;
- `read_egocentric` (training): the read-out at the answers of packed rows, with its grounding;
- `egocentric_state` (inference): the read-out at the answer's first token.

Each aid is off by default; a model without them is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loc3r.vlm.egocentric_readout import EgocentricReadout, teacher_pose
from loc3r.vlm.heading_pointer import HeadingPointer, bearing
from loc3r.vlm.losses import GROUNDING_EPS
from loc3r.vlm.point_embedding import PointEmbedding
from loc3r.vlm.position_pointer import PositionPointer

if TYPE_CHECKING:
    from loc3r.vlm.loc3r_vlm import Loc3rVLM, PosePrediction, ScenePrefix, TrainSample
    from loc3r.vlm.packing import PackedBatch


@dataclass
class PointedPose:
    """The pointers' reading of N poses (position_pointer, heading_pointer), in training's graph.

    xy (N, 2) and yaw (N,) are the poses after the pointers' gates (f_pos's and f_ori's own where
    the model lacks a pointer); the pointed values are each pointer's own, with its (N, P)
    attention over the patches (None without that pointer). The heading pointer's vectors
    (heading_pointer: u and v, (N, 2)) are what its losses read.
    """

    xy: torch.Tensor
    yaw: torch.Tensor
    pointed_xy: torch.Tensor | None = None
    xy_attention: torch.Tensor | None = None
    pointed_yaw: torch.Tensor | None = None
    yaw_attention: torch.Tensor | None = None
    yaw_vector: torch.Tensor | None = None
    pointed_vector: torch.Tensor | None = None


# the PointedPose fields the packed rows' readings are merged into
MERGED_FIELDS = ("xy", "yaw", "pointed_xy", "pointed_yaw", "yaw_vector", "pointed_vector")


def object_mass(
    weights: torch.Tensor | None, n: int, cells: torch.Tensor | None, patch_cells: torch.Tensor
) -> torch.Tensor | None:
    """Row n of an (N, P) attention's mass on the patches that show an object; None without any.

    cells (T, g, g) bool are the pooled patches showing it, patch_cells (P,) each attended
    token's pooled-patch index. As grounding_nll: an object in no patch does not count.
    """
    if weights is None or cells is None:
        return None
    on_object = cells.reshape(-1).to(weights.device)[patch_cells]
    if not bool(on_object.any()):
        return None
    return (weights[n] * on_object.to(weights.dtype)).sum()


def add_aids(model: Loc3rVLM, hidden: int) -> None:
    """Give `model` the aids its config asks for, None for each it does not.

    ValueError when one lacks what it needs (the layout head, the read-out it extends, the
    camera tokens' width).
    """
    config = model.config
    model.point_embedding = PointEmbedding(hidden) if config.point_embedding else None
    if config.position_pointer and not config.enable_layout_head:
        raise ValueError("position_pointer reads the layout: it needs enable_layout_head")
    model.position_pointer = PositionPointer(hidden) if config.position_pointer else None
    if config.egocentric_readout and not config.enable_layout_head:
        raise ValueError("egocentric_readout reads the layout: it needs enable_layout_head")
    if config.readout_objects and not config.egocentric_readout:
        raise ValueError("readout_objects extends the egocentric read-out: it needs it")
    if config.readout_anchor and not (config.egocentric_readout and config.position_pointer):
        raise ValueError(
            "readout_anchor gives the egocentric read-out the position pointer's attention: "
            "it needs both"
        )
    model.egocentric_readout = (
        EgocentricReadout(hidden, objects=config.readout_objects, anchor=config.readout_anchor)
        if config.egocentric_readout
        else None
    )
    if config.heading_pointer and not config.enable_layout_head:
        raise ValueError("heading_pointer reads the layout: it needs enable_layout_head")
    model.heading_pointer = HeadingPointer(hidden) if config.heading_pointer else None
    if config.point_embedding:
        from loc3r.engine.perception import geometry_token_width

        grid = model.base.config.pooled_grid
        needed = geometry_token_width(grid)
        if not config.use_camera_tokens or config.cam_token_dim < needed:
            raise ValueError(
                f"point_embedding needs camera tokens of at least {needed} "
                f"values (geometry tokens of a {grid}x{grid} grid), not {config.cam_token_dim}"
                + ("" if config.use_camera_tokens else " (camera tokens are off)")
            )


def point_pose(
    model: Loc3rVLM,
    pos_hidden: torch.Tensor,
    ori_hidden: torch.Tensor,
    patch_hidden: torch.Tensor,
    own_xy: torch.Tensor,
    own_yaw: torch.Tensor,
) -> PointedPose:
    """The pointers' reading of N poses (see PointedPose).

    A pointer the model lacks keeps f_pos's own_xy (N, 2) or f_ori's own_yaw (N,).
    pos_hidden and ori_hidden (N, H) are <Pos> and <Ori> states, patch_hidden (N or 1, P, H).
    """
    layout = model.layout_head(patch_hidden)[..., :2]
    xy, yaw = own_xy.float(), own_yaw.float()
    pose = PointedPose(xy, yaw)
    if model.position_pointer is not None:
        pose.pointed_xy, pose.xy_attention = model.position_pointer.point(
            pos_hidden, patch_hidden, layout
        )
        pose.xy = xy = model.position_pointer.mix(pos_hidden, xy, pose.pointed_xy)
    if model.heading_pointer is not None:
        pose.pointed_vector, pose.yaw_attention = model.heading_pointer.point(
            ori_hidden, patch_hidden, layout, xy
        )
        pose.yaw_vector = model.heading_pointer.mix(ori_hidden, yaw, pose.pointed_vector)
        pose.pointed_yaw, pose.yaw = bearing(pose.pointed_vector), bearing(pose.yaw_vector)
    return pose


def point_in_rows(
    model: Loc3rVLM,
    states: torch.Tensor,
    samples: list[TrainSample],
    batch: PackedBatch,
    situated: list[int],
    rows: torch.Tensor,
    cols: torch.Tensor,
    own_xy: torch.Tensor,
    own_yaw: torch.Tensor,
) -> tuple[PointedPose, dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """point_pose of the <Pos> at (rows, cols) (<Ori> after it) of packed states (R, L, H).

    own_xy (N, 2) and own_yaw (N,) are f_pos's and f_ori's reading of the same tokens. Also
    the pointers' grounding losses (-log of their attention's mass on the anchor's patches,
    "pointer_ground", and on the faced object's, "heading_ground"; 0 without such a patch),
    and each row's position pointer attention (detached; its samples in `rows` order, over
    the row's patches; empty without the pointer), which the read-out's `anchor` reads.
    """
    merged = PointedPose(own_xy.float(), own_yaw.float())  # every row overwrites its own
    masses: dict[str, list[torch.Tensor]] = {"pointer_ground": [], "heading_ground": []}
    anchors: dict[int, torch.Tensor] = {}
    for row in rows.unique().tolist():
        chosen = (rows == row).nonzero().flatten()
        where = (batch.patch_at[row] >= 0).nonzero().flatten()
        # the row's patches once (1, P, H): keys and layout broadcast over its samples
        pose = point_pose(
            model, states[row, cols[chosen]], states[row, cols[chosen] + 1],
            states[row, where][None], own_xy[chosen], own_yaw[chosen],
        )  # fmt: skip
        if pose.xy_attention is not None:
            anchors[row] = pose.xy_attention.detach()
        for name in MERGED_FIELDS:
            value = getattr(pose, name)
            if value is not None:  # out of place: the graph keeps each row's
                into = getattr(merged, name)
                if into is None:
                    into = value.new_zeros((len(rows), *value.shape[1:]))
                setattr(merged, name, into.index_put((chosen,), value))
        if not model.config.ground_pointers:
            continue
        for n, k in enumerate(chosen.tolist()):
            sample = samples[situated[k]]
            for part, weights, cells in (
                ("pointer_ground", pose.xy_attention, sample.anchor_cells),
                ("heading_ground", pose.yaw_attention, sample.target_cells),
            ):
                mass = object_mass(weights, n, cells, batch.patch_at[row][where])
                if mass is not None:
                    masses[part].append(mass)
    losses = {}
    for part, pointer in (("pointer_ground", model.position_pointer),
                          ("heading_ground", model.heading_pointer)):  # fmt: skip
        if pointer is not None and model.config.ground_pointers:  # else no mass was taken
            found = masses[part]
            losses[part] = (
                -(torch.stack(found) + GROUNDING_EPS).log().mean() if found
                else states.sum() * 0.0
            )  # fmt: skip
    return merged, losses, anchors


def read_egocentric(
    model: Loc3rVLM,
    states: torch.Tensor,
    samples: list[TrainSample],
    batch: PackedBatch,
    situated: list[int],
    own_xy: torch.Tensor,
    own_yaw: torch.Tensor,
    anchors: dict[int, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed states with the read-out added at the situated samples' answer tokens.

    Also L_readout_ground, -log of its attention's mass on the question's object's patches.
    own_xy (N, 2) and own_yaw (N,) are the model's poses of the `situated` samples; half of
    them take the true pose instead (egocentric_readout.teacher_pose). `anchors` are the
    rows' position pointer attention (`point_in_rows`), for a read-out that knows the anchor.
    """
    readout = model.egocentric_readout
    true_xy = torch.stack([samples[i].position.float() for i in situated]).to(model.device)
    true_yaw = torch.tensor([float(samples[i].yaw) for i in situated], device=model.device)
    teach = torch.tensor(
        [teacher_pose(samples[i].situation, samples[i].question) for i in situated],
        device=model.device,
    )
    pose_xy = torch.where(teach[:, None], true_xy, own_xy.detach().float())
    pose_yaw = torch.where(teach, true_yaw, own_yaw.detach().float())
    rows = torch.tensor([batch.rows[i] for i in situated], device=model.device)
    cols = torch.tensor([batch.queries(i)[2] for i in situated], device=model.device)
    added = torch.zeros(len(situated), states.shape[-1], device=model.device)
    masses = []  # each sample's read-out attention on its question's object
    for row in rows.unique().tolist():
        chosen = (rows == row).nonzero().flatten()
        patch_at = batch.patch_at[row]
        where = (patch_at >= 0).nonzero().flatten()
        patches = states[row, where]
        layout = model.layout_head(patches)[:, :2]
        delta, weights = readout(
            states[row, cols[chosen]], patches[None], layout[None], pose_xy[chosen],
            pose_yaw[chosen], anchors.get(row),
        )  # fmt: skip
        added = added.index_put((chosen,), delta.float())
        for n, k in enumerate(chosen.tolist()):
            mass = object_mass(weights, n, samples[situated[k]].question_cells, patch_at[where])
            if mass is not None:
                masses.append(mass)
    answer_states = states.index_put((rows, cols), added.to(states.dtype), accumulate=True)
    if not masses:
        return answer_states, added.sum() * 0.0
    return answer_states, -(torch.stack(masses) + GROUNDING_EPS).log().mean()


def egocentric_state(
    model: Loc3rVLM, prefix: ScenePrefix, last: torch.Tensor, pose: PosePrediction
) -> torch.Tensor:
    """The answer token's last state (H,) plus the egocentric read-out's, for `pose`."""
    if model.egocentric_readout is None:
        return last
    if prefix.patch_positions is None or prefix.last_hidden is None:
        raise ValueError("the egocentric read-out needs a scene prefix from encode_scene")
    patches = prefix.last_hidden[prefix.patch_positions]
    layout = model.layout_head(patches)[:, :2]
    yaw = torch.tensor([pose.yaw], device=model.device)
    anchor = pose.anchor_attention
    anchor = None if anchor is None else anchor.to(model.device)[None]
    delta, _ = model.egocentric_readout(
        last[None], patches[None], layout[None], pose.xy.to(model.device)[None], yaw, anchor
    )
    return last + delta[0]
