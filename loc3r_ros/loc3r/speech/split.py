"""Split a spoken transcript into the speaker's situation and the question.

"I am sitting on the bed facing the window what is on my left" ->
("I am sitting on the bed facing the window", "what is on my left?").

Sentence punctuation (. ! ? ;), when the recogniser gives any, bounds the pieces; inside a
sentence (and in unpunctuated transcripts) a question starts at a question word (what, where,
which, how, who, whose, why) or at an auxiliary followed by a subject ("is the", "are there",
"can i", "do you", "should i", "am i", "tell me"), and a situation starts at a first-person cue
("i am", "i'm") or, at the very beginning, at "facing / standing / sitting / lying". Words
before the first cue belong to the situation unless they are only fillers ("okay", "please").
A situation may also follow the question ("what is on my left? i am facing the door").
Limitation: a relative clause inside the situation ("the chair which is red") is read as the
start of the question.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from loc3r.errors import InputError
from loc3r.speech.errors import SpeechInputError
from loc3r.text_input import clean_text

QUESTION_WORDS = frozenset({"what", "where", "which", "how", "who", "whose", "why", "what's"})
QUESTION_WORDS |= frozenset({"where's", "how's", "who's"})
AUXILIARIES = frozenset(
    {"is", "are", "can", "could", "do", "does", "should", "would", "will", "am", "tell", "isn't"}
)
SUBJECTS = frozenset(
    {"the", "a", "an", "there", "it", "this", "that", "these", "those", "i", "my", "me", "any"}
    | {"anything", "something", "you", "we", "they", "he", "she", "some"}
)
FIRST_PERSON = frozenset({"i'm", "im"})
PARTICIPLES = frozenset({"facing", "standing", "sitting", "lying", "looking"})
SUBORDINATORS = frozenset({"if", "when", "while", "as", "because", "since", "once", "after"})
FILLERS = frozenset(
    {"ok", "okay", "so", "please", "hey", "hi", "hello", "um", "uh", "er", "well", "robot", "and"}
)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_STRIP = " \t,;:-"


class SplitUtterance(NamedTuple):
    """The two parts of an utterance ('' when no situation was said)."""

    situation: str
    question: str


def _bare(token: str) -> str:
    """Lowercase word without surrounding punctuation ('Chair,' -> 'chair')."""
    return token.lower().replace("\u2019", "'").strip('.,!?;:"()[]-')


def _question_starts(words: list[str], i: int) -> bool:
    word = words[i]
    following = words[i + 1] if i + 1 < len(words) else ""
    if word in QUESTION_WORDS:
        return True
    if word == "am":
        return following == "i"
    if word == "tell":
        return following == "me"
    return word in AUXILIARIES and following in SUBJECTS


def _situation_starts(words: list[str], i: int, state: str | None) -> bool:
    word = words[i]
    following = words[i + 1] if i + 1 < len(words) else ""
    first_person = word in FIRST_PERSON or (word == "i" and following in ("am", "was"))
    if state == "question":
        previous = words[i - 1] if i else ""
        return first_person and previous not in SUBORDINATORS
    return first_person or (state is None and word in PARTICIPLES)


def _label(words: list[str]) -> list[str | None]:
    """Per-word label: 'situation', 'question' or None (before any cue)."""
    labels: list[str | None] = []
    state: str | None = None
    for i in range(len(words)):
        if state != "question" and _question_starts(words, i):
            state = "question"
        elif state != "situation" and _situation_starts(words, i, state):
            state = "situation"
        labels.append(state)
    return labels


def _split_sentence(sentence: str) -> tuple[list[str], list[str]]:
    """Situation and question tokens of one sentence."""
    tokens = sentence.split()
    words = [_bare(t) for t in tokens]
    labels = _label(words)
    situation: list[str] = []
    question: list[str] = []
    if "question" not in labels and sentence.rstrip().endswith("?"):
        return [], tokens
    leading = [t for t, label in zip(tokens, labels, strict=True) if label is None]
    if leading and not all(_bare(t) in FILLERS for t in leading):
        situation += leading
    for token, label in zip(tokens, labels, strict=True):
        if label == "situation":
            situation.append(token)
        elif label == "question":
            question.append(token)
    return situation, question


def _join(tokens: list[str]) -> str:
    return " ".join(tokens).strip(_STRIP)


def split_utterance(text: str, max_chars: int = 2000) -> SplitUtterance:
    """(situation, question) of a transcript; SpeechInputError when no question was heard.

    The question gets a final '?' when it has no end punctuation; the situation is returned
    as said (without trailing punctuation), '' when absent.
    """
    try:
        cleaned = clean_text(text, field="transcript", max_chars=max_chars, required=False)
    except InputError as exc:
        raise SpeechInputError(str(exc)) from None
    situation: list[str] = []
    question: list[str] = []
    for sentence in _SENTENCE_END.split(cleaned):
        s_tokens, q_tokens = _split_sentence(sentence)
        if s_tokens:
            situation.append(_join(s_tokens).rstrip("."))
        if q_tokens:
            question.append(_join(q_tokens))
    question_text = " ".join(q for q in question if q).strip()
    if not question_text:
        heard = f" (heard: {cleaned[:80]!r})" if cleaned else ""
        raise SpeechInputError(f"no question heard{heard}")
    if question_text[-1] not in ".?!":
        question_text += "?"
    return SplitUtterance(", ".join(s for s in situation if s), question_text)
