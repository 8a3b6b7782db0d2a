"""Answer normalisation and exact match (EM@1, refined EM) as the 3D-QA benchmarks score them.

The official evaluators of SQA3D/ScanQA-style benchmarks disagree in small ways; each variant
here reproduces one family, case for case (checked against reference vectors produced by
running the official code):

- ``leo``: LEO's ``clean_answer`` + ``answer_match`` (references tried in order; the first
  substring relation ends the search). The default, as the paper's baselines use it.
- ``vlm3r``: VLM-3R / Ross3D. EM = prediction in references; EM-R adds any substring relation.
- ``chatscene``: Chat-Scene / GPT4Scene / View2Cap. As ``vlm3r`` but an empty prediction never
  matches, one trailing ``.`` is dropped and the first letter lower-cased before cleaning, and
  ScanQA references are compared raw (uncleaned), as those evaluators do.
- ``video3dllm``: Video-3D-LLM. SQA3D: cleaned strings equal; ScanQA: raw prediction in the raw
  references. No refined EM.
- ``scanqa_official``: the ScanQA benchmark's Top-1 EM (raw prediction in raw references). A
  prediction with no whitespace-separated token is not scorable there (the official code
  divides by its length) and is excluded from the mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER_VARIANTS = ("leo", "vlm3r", "chatscene", "video3dllm", "scanqa_official")
QUESTION_TYPES = ("what", "is", "how", "can", "which", "other")  # SQA3D type 0..5

_NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve",
    "13": "thirteen", "14": "fourteen", "15": "fifteen", "16": "sixteen", "17": "seventeen",
    "18": "eighteen", "19": "nineteen", "20": "twenty", "23": "twenty-three",
}  # fmt: skip
_WORD_FIXES = (
    ("letf", "left"), ("let", "left"), ("tehre", "there"), ("rigth", "right"),
    ("rght", "right"), ("behine", "behind"), ("tv", "TV"), ("chai", "chair"),
    ("wasing", "washing"), ("waslked", "walked"), ("oclock", "o'clock"),
)  # fmt: skip


def clean_answer(text: str) -> str:
    """The benchmarks' answer normalisation (LEO ``clean_answer``; SQA3D's rule list).

    Its quirks are kept on purpose (they decide official scores): trailing spaces are stripped
    before punctuation is deleted, ``tv`` becomes ``TV``, numbers 0-20 and 23 become words,
    a letter word loses one trailing digit, articles go only before a letter word.
    """
    text = text.lower()
    text = re.sub(r"[ ]+$", "", text)
    text = re.sub(r"^[ ]+", "", text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r"\.[ ]{2,}", ". ", text)
    text = re.sub(r"[^a-zA-Z0-9,'\s\-:]+", "", text)
    for wrong, right in _WORD_FIXES:
        text = re.sub(rf"\b{wrong}\b", right, text)
    text = re.sub(r"\bo'[ ]+clock\b", "o'clock", text)
    text = re.sub(r"\b0\b", "zero", text)
    text = re.sub(r"\bnone\b", "zero", text)
    for digits, word in _NUMBER_WORDS.items():
        if digits != "0":
            text = re.sub(rf"\b{digits}\b", word, text)
    text = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>", text)
    for article in ("a", "an", "the"):
        text = re.sub(rf"\b{article}\b ([a-zA-Z]+)", r"\g<1>", text)
    return re.sub(r"\bbackwards\b", "backward", text)


def sqa_question_type(question: str) -> int:
    """SQA3D question type by the first word (LEO's ``get_sqa_question_type``).

    0 what, 1 is, 2 how, 3 can, 4 which, 5 other.
    """
    question = question.lstrip().lower()
    for index, prefix in enumerate(QUESTION_TYPES[:5]):
        if question.startswith(prefix):
            return index
    return 5


def _nospace(text: str) -> str:
    return "".join(text.split())


def _substring_related(a: str, b: str) -> bool:
    a, b = _nospace(a), _nospace(b)
    return a in b or b in a


@dataclass(frozen=True)
class AnswerScore:
    """One case under one variant.

    ``em_refined`` is None where the variant has none; ``scored`` is False where the official
    code cannot score the case (excluded from means).
    """

    em: int
    em_refined: int | None
    pred_norm: str
    refs_used: tuple[str, ...]
    scored: bool = True


def score_answer(
    prediction: str, references: list[str] | tuple[str, ...], variant: str = "leo",
    dataset: str = "sqa3d",
) -> AnswerScore:  # fmt: skip
    """EM and refined EM of `prediction` against `references` under `variant`.

    `dataset` matters where the official evaluators treat SQA3D (one reference) and ScanQA
    (several references) differently: ``chatscene`` and ``video3dllm``.
    """
    if variant not in ANSWER_VARIANTS:
        raise ValueError(f"unknown answer variant {variant!r}; choose from {ANSWER_VARIANTS}")
    if dataset not in ("sqa3d", "scanqa"):
        raise ValueError(f"unknown dataset {dataset!r}; choose sqa3d or scanqa")
    references = tuple(references)
    if not references:
        raise ValueError("an answer needs at least one reference")
    if variant == "leo":
        pred, refs = clean_answer(prediction), tuple(clean_answer(r) for r in references)
        for ref in refs:
            if pred == ref:
                return AnswerScore(1, 1, pred, refs)
            if _substring_related(pred, ref):
                return AnswerScore(0, 1, pred, refs)
        return AnswerScore(0, 0, pred, refs)
    if variant == "vlm3r":
        pred, refs = clean_answer(prediction), tuple(clean_answer(r) for r in references)
        em = int(pred in refs)
        refined = int(em or any(_substring_related(pred, r) for r in refs))
        return AnswerScore(em, refined, pred, refs)
    if variant == "chatscene":
        text = prediction[:-1] if prediction.endswith(".") else prediction
        text = text[:1].lower() + text[1:]
        pred = clean_answer(text)
        refs = references if dataset == "scanqa" else tuple(clean_answer(r) for r in references)
        if not pred:
            return AnswerScore(0, 0, pred, refs)
        em = int(pred in refs)
        refined = int(em or any(_substring_related(pred, r) for r in refs))
        return AnswerScore(em, refined, pred, refs)
    if variant == "video3dllm":
        if dataset == "sqa3d":
            pred, refs = clean_answer(prediction), tuple(clean_answer(r) for r in references)
            return AnswerScore(int(pred == refs[0]), None, pred, refs)
        return AnswerScore(int(prediction in references), None, prediction, references)
    # scanqa_official: raw string in raw references; unscorable without a token
    scored = bool(prediction.split())
    return AnswerScore(int(prediction in references), None, prediction, references, scored)
