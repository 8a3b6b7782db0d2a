"""Evaluation of situated answers and poses: per-case scores, aggregates, baselines, tables.

A case is one situated question with the model's output (`EvalCase`, one JSON line in a
predictions file). `evaluate_cases` scores every case under the chosen answer and localization
variants (see `answers` and `localization`), aggregates overall and per question type, and adds
two baselines on the same cases: *random* (position uniform over the bounding box of the scene's
ground-truth positions, heading uniform; the expectation over seeded draws) and *majority* (the
most frequent reference answer of each question type in the same split); for synthetic rooms,
also the *ceiling* (loc3r.eval.text_ceiling: the same questions answered from the situation's
words and the true room), scored alike.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loc3r.errors import Loc3rError
from loc3r.eval.answers import ANSWER_VARIANTS, QUESTION_TYPES, score_answer, sqa_question_type
from loc3r.eval.localization import (
    LOCALIZATION_VARIANTS,
    METRIC_NAMES,
    POSITION_THRESHOLDS_M,
    ROTATION_THRESHOLDS_DEG,
    rotvec_z,
    score_pose,
    yaw_quaternion,
)

LEO_TYPE_COUNT_OFFSET = 1e-10  # LEO and Chat-Scene divide per-type sums by count + 1e-10
RANDOM_DRAWS = 200


class EvalInputError(Loc3rError):
    """A predictions file or case that cannot be scored."""


@dataclass
class EvalCase:
    """One situated question: ground truth and prediction (poses optional).

    Poses: ``gt_position`` [x, y(, z)] with ``gt_yaw`` (radians) or ``gt_quat`` (x, y, z, w);
    predictions as lists (SQA3D's metric takes up to three) of positions and yaws or quats.
    """

    id: str
    question: str
    prediction: str
    references: list[str]
    question_type: str = ""
    scene_id: str = ""
    dataset: str = "sqa3d"  # sqa3d (one reference) or scanqa (several)
    gt_position: list[float] | None = None
    gt_yaw: float | None = None
    gt_quat: list[float] | None = None
    pred_positions: list[list[float]] = field(default_factory=list)
    pred_yaws: list[float] = field(default_factory=list)
    pred_quats: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.references, list) or not self.references:
            raise EvalInputError(f"case {self.id}: 'references' must be a non-empty list")
        if not all(isinstance(r, str) for r in [self.prediction, self.question, *self.references]):
            raise EvalInputError(f"case {self.id}: question, prediction and references are text")
        if not self.question_type:
            self.question_type = QUESTION_TYPES[sqa_question_type(self.question)]
        numbers = [*(self.gt_position or []), *(self.gt_quat or []), *self.pred_yaws]
        numbers += [v for p in self.pred_positions + self.pred_quats for v in p]
        if self.gt_yaw is not None:
            numbers.append(self.gt_yaw)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise EvalInputError(f"case {self.id}: poses must be finite numbers")

    @property
    def has_pose(self) -> bool:
        """Whether the case has a ground-truth pose and a predicted one."""
        return self.gt_position is not None and bool(self.pred_positions)

    def gt_quaternion(self) -> np.ndarray:
        """Ground-truth heading as a scalar-last quaternion."""
        if self.gt_quat is not None:
            return np.asarray(self.gt_quat, float)
        if self.gt_yaw is None:
            raise EvalInputError(f"case {self.id}: ground truth has a position but no heading")
        return yaw_quaternion(self.gt_yaw)

    def pred_quaternions(self) -> list[np.ndarray]:
        """Predicted headings as scalar-last quaternions."""
        if self.pred_quats:
            return [np.asarray(q, float) for q in self.pred_quats]
        if len(self.pred_yaws) != len(self.pred_positions):
            raise EvalInputError(f"case {self.id}: one predicted heading per predicted position")
        return [yaw_quaternion(y) for y in self.pred_yaws]

    @classmethod
    def from_dict(cls, data: dict) -> EvalCase:
        """From a predictions-file row (see `read_cases`)."""
        try:
            gt, preds = data.get("gt") or {}, data.get("preds") or []
            if "pred" in data:
                preds = [data["pred"], *preds]
            return cls(
                id=str(data["id"]), question=data.get("question", ""),
                prediction=data["prediction"], references=data["references"],
                question_type=str(data.get("question_type", "")),
                scene_id=str(data.get("scene_id", "")), dataset=data.get("dataset", "sqa3d"),
                gt_position=gt.get("position"), gt_yaw=gt.get("yaw"), gt_quat=gt.get("quat_xyzw"),
                pred_positions=[p["position"] for p in preds],
                pred_yaws=[p["yaw"] for p in preds if "yaw" in p],
                pred_quats=[p["quat_xyzw"] for p in preds if "quat_xyzw" in p],
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError) as error:
            raise EvalInputError(
                f"case {data.get('id', '?')}: missing or bad field {error}"
            ) from None

    def to_dict(self) -> dict:
        """The predictions-file row (inverse of `from_dict`)."""
        row = {
            "id": self.id, "scene_id": self.scene_id, "dataset": self.dataset,
            "question_type": self.question_type, "question": self.question,
            "prediction": self.prediction, "references": self.references,
        }  # fmt: skip
        if self.gt_position is not None:
            row["gt"] = {"position": self.gt_position}
            row["gt"].update(
                {"yaw": self.gt_yaw} if self.gt_quat is None else {"quat_xyzw": self.gt_quat}
            )
            row["preds"] = [
                {"position": p, **({"yaw": y} if not self.pred_quats else {"quat_xyzw": y})}
                for p, y in zip(self.pred_positions, self.pred_quats or self.pred_yaws, strict=True)
            ]
        return row


def read_cases(path: str | Path) -> list[EvalCase]:
    """Cases from a JSON-lines predictions file; errors name the line."""
    cases = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                cases.append(EvalCase.from_dict(json.loads(line)))
            except (json.JSONDecodeError, EvalInputError) as error:
                raise EvalInputError(f"{path}:{number}: {error}") from None
    if not cases:
        raise EvalInputError(f"{path}: no cases")
    return cases


def write_cases(path: str | Path, cases: Iterable[EvalCase]) -> None:
    """Write a JSON-lines predictions file."""
    with open(path, "w", encoding="utf-8") as file:
        for case in cases:
            file.write(json.dumps(case.to_dict()) + "\n")


def print_and_save(report: dict, markdown: str, out: Path | None) -> None:
    """Print a diagnostic's Markdown and, given `out`, write its JSON report there."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(markdown)


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def type_means(values: Sequence[float], types: Sequence[str], offset: float = 0.0) -> dict:
    """Per-type means; `offset` is added to each count as LEO/Chat-Scene do (1e-10)."""
    sums: dict[str, float] = defaultdict(float)
    counts: Counter = Counter()
    for value, kind in zip(values, types, strict=True):
        sums[kind] += value
        counts[kind] += 1
    return {kind: sums[kind] / (counts[kind] + offset) for kind in sorted(counts)}


def score_answers(cases: Sequence[EvalCase], variant: str) -> list[dict]:
    """Per-case EM / EM-R under `variant`."""
    rows = []
    for case in cases:
        score = score_answer(case.prediction, case.references, variant, case.dataset)
        rows.append({"em": score.em, "em_refined": score.em_refined, "scored": score.scored,
                     "pred_norm": score.pred_norm})  # fmt: skip
    return rows


def aggregate_answers(cases: Sequence[EvalCase], rows: Sequence[dict], variant: str) -> dict:
    """Overall EM (and EM-R where the variant has it) and per question type."""
    used = [(c, r) for c, r in zip(cases, rows, strict=True) if r["scored"]]
    offset = LEO_TYPE_COUNT_OFFSET if variant in ("leo", "chatscene") else 0.0
    types = [c.question_type for c, _ in used]
    result = {"n": len(cases), "n_used": len(used), "em": _mean([r["em"] for _, r in used]),
              "em_by_type": type_means([r["em"] for _, r in used], types, offset)}  # fmt: skip
    if used and used[0][1]["em_refined"] is not None:
        refined = [r["em_refined"] for _, r in used]
        result["em_refined"] = _mean(refined)
        result["em_refined_by_type"] = type_means(refined, types, offset)
    return result


def score_poses(cases: Sequence[EvalCase], variant: str) -> list[dict | None]:
    """Per-case errors and flags (None for cases without a pose)."""
    rows: list[dict | None] = []
    for case in cases:
        if not case.has_pose:
            rows.append(None)
            continue
        try:
            score = score_pose(case.gt_position, case.gt_quaternion(), case.pred_positions,
                               case.pred_quaternions(), variant)  # fmt: skip
        except ValueError as error:
            raise EvalInputError(f"case {case.id}: {error}") from None
        rows.append({"pos_err_m": score.pos_err_m, "rot_err_deg": score.rot_err_deg,
                     **score.flags()})  # fmt: skip
    return rows


def aggregate_poses(rows: Sequence[dict | None]) -> dict:
    """Mean accuracy flags and median errors over the cases with poses."""
    scored = [r for r in rows if r is not None]
    result: dict = {"n": len(scored)}
    for name in METRIC_NAMES:
        result[name] = _mean([r[name] for r in scored])
    if scored:
        result["median_pos_err_m"] = float(np.median([r["pos_err_m"] for r in scored]))
        result["median_rot_err_deg"] = float(np.median([r["rot_err_deg"] for r in scored]))
    return result


def random_baseline(cases: Sequence[EvalCase], variant: str, seed: int = 0) -> dict:
    """Expected accuracies of a uniform guess, over `RANDOM_DRAWS` seeded draws per case.

    Position uniform in the bounding box of the scene's ground-truth positions, heading
    uniform in [-pi, pi); thresholds as in `variant` (``view2cap`` is inclusive).
    """
    with_pose = [c for c in cases if c.gt_position is not None]
    if not with_pose:
        return {"n": 0}
    by_scene: dict[str, list[EvalCase]] = defaultdict(list)
    for case in with_pose:
        by_scene[case.scene_id].append(case)
    rng = np.random.default_rng(seed)
    below = np.less_equal if variant == "view2cap" else np.less
    totals: Counter = Counter()
    for scene_cases in by_scene.values():
        xy = np.array([c.gt_position[:2] for c in scene_cases], float)
        heading = np.array([rotvec_z(c.gt_quaternion()) for c in scene_cases])
        guess_xy = rng.uniform(xy.min(0), xy.max(0), size=(RANDOM_DRAWS, len(xy), 2))
        pos_err = np.sqrt(((guess_xy - xy) ** 2).sum(-1))
        diff = np.abs(rng.uniform(-math.pi, math.pi, size=(RANDOM_DRAWS, len(xy))) - heading)
        rot_err = np.minimum(diff, 2 * math.pi - diff) / math.pi * 180
        for name, errors, threshold in zip(
            METRIC_NAMES, (pos_err, pos_err, rot_err, rot_err),
            (*POSITION_THRESHOLDS_M, *ROTATION_THRESHOLDS_DEG), strict=True,
        ):  # fmt: skip
            totals[name] += int(below(errors, threshold).sum())
    draws = len(with_pose) * RANDOM_DRAWS
    return {"n": len(with_pose), **{name: totals[name] / draws for name in METRIC_NAMES}}


def majority_baseline(cases: Sequence[EvalCase], variant: str) -> dict:
    """EM of answering every question with its type's most frequent (first) reference."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for case in cases:
        counts[case.question_type][case.references[0]] += 1
    majority = {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}
    guesses = [
        EvalCase(case.id, case.question, majority[case.question_type], case.references,
                 case.question_type, case.scene_id, case.dataset)
        for case in cases
    ]  # fmt: skip
    result = aggregate_answers(guesses, score_answers(guesses, variant), variant)
    result["answers"] = majority
    return result


def evaluate_cases(
    cases: Sequence[EvalCase], answer_variant: str = "leo", localization_variant: str = "sqa3d",
    seed: int = 0,
) -> dict:  # fmt: skip
    """Scores, aggregates and baselines of `cases` (a JSON-friendly report).

    Synthetic runs add a "ceiling" part (loc3r.eval.text_ceiling.ceiling_report).
    """
    if answer_variant not in ANSWER_VARIANTS:
        raise EvalInputError(f"unknown answer variant {answer_variant!r}; one of {ANSWER_VARIANTS}")
    if localization_variant not in LOCALIZATION_VARIANTS:
        raise EvalInputError(
            f"unknown localization variant {localization_variant!r}; one of {LOCALIZATION_VARIANTS}"
        )
    if not cases:
        raise EvalInputError("no cases to evaluate")
    answer_rows = score_answers(cases, answer_variant)
    pose_rows = score_poses(cases, localization_variant)
    return {
        "variants": {"answers": answer_variant, "localization": localization_variant},
        "model": {"answers": aggregate_answers(cases, answer_rows, answer_variant),
                  "localization": aggregate_poses(pose_rows)},
        "random": {"localization": random_baseline(cases, localization_variant, seed)},
        "majority": {"answers": majority_baseline(cases, answer_variant)},
        "cases": [{"id": c.id, "question_type": c.question_type, **a, "pose": p}
                  for c, a, p in zip(cases, answer_rows, pose_rows, strict=True)],
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_report(report: dict, title: str = "Evaluation") -> str:
    """The report as Markdown tables (percentages)."""
    variants = report["variants"]
    model, rand, major = report["model"], report["random"], report["majority"]
    loc, answers = model["localization"], model["answers"]
    lines = [
        f"### {title}",
        "",
        f"Answer metric: `{variants['answers']}`; localization metric: "
        f"`{variants['localization']}`; {answers['n']} questions, {loc['n']} with poses.",
        "",
    ]
    ceiling = report.get("ceiling")
    if loc["n"]:
        lines += ["| | Acc@0.5m | Acc@1.0m | Acc@15° | Acc@30° |", "|---|---|---|---|---|"]
        rows = [("model", loc), ("random", rand["localization"])]
        if ceiling is not None:
            rows.append(("ceiling (the words, the true room)", ceiling["localization"]))
        for name, part in rows:
            lines.append(f"| {name} | " + " | ".join(_pct(part[m]) for m in METRIC_NAMES) + " |")
        lines.append("")
    top = ceiling["answers"] if ceiling is not None else None
    lines += ["| question type | n | EM (model) | EM-R (model) | EM (majority) | majority answer |"
              + (" EM (ceiling) |" if top else ""),
              "|---|---|---|---|---|---|" + ("---|" if top else "")]  # fmt: skip
    counts = Counter(case["question_type"] for case in report["cases"] if case["scored"])
    refined = answers.get("em_refined_by_type", {})
    for kind in sorted(answers["em_by_type"]):
        lines.append(
            f"| {kind} | {counts[kind]} | {_pct(answers['em_by_type'][kind])} | "
            f"{_pct(refined.get(kind))} | {_pct(major['answers']['em_by_type'].get(kind))} | "
            f"{major['answers']['answers'].get(kind, '')} |"
            + (f" {_pct(top['em_by_type'].get(kind))} |" if top else "")
        )
    lines.append(
        f"| **all** | {answers['n_used']} | {_pct(answers['em'])} | "
        f"{_pct(answers.get('em_refined'))} | {_pct(major['answers']['em'])} | |"
        + (f" {_pct(top['em'])} |" if top else "")
    )
    if top:
        lines += [
            "",
            "Ceiling: each question answered from its situation's words and the true room "
            "(loc3r.eval.text_ceiling): what perfect perception would score.",
        ]
    if source := report.get("pose_source"):
        lines += [
            "",
            f"Camera poses ({source['source']} pose source, {source['frames']} frames"
            + (", every video step streamed" if source.get("stream_video") else "")
            + ", relative to each scene's first frame): median error "
            f"{source['median_position_error_m']:.2f} "
            f"m / {source['median_rotation_error_deg']:.1f}°, 90th percentile "
            f"{source['p90_position_error_m']:.2f} m / {source['p90_rotation_error_deg']:.1f}°.",
        ]
    return "\n".join(lines) + "\n"
