"""The spoken-language domain: situation and question sentences built from the scene catalogue.

Everything comes from `loc3r.scenes`: object kinds and their colours (`world.CATALOGUE`,
`world.COLOURS`), the sittable kinds, and the exact situation / question wording of
`situations.make_situation` / `make_questions` run on procedural rooms. On top of that, short
templated forms people use when speaking ("what is on my left", "how far is the sofa", "which
is closer, the lamp or the plant"). The language model of the recogniser is trained on it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from loc3r.scenes.situations import SITTABLE, make_questions, make_situation
from loc3r.scenes.world import CATALOGUE, generate_room

SIDES = ("on my left", "on my right", "behind me", "in front of me")
LYABLE = ("bed", "sofa")  # "I am lying on the bed"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class CorpusConfig:
    """How much text to generate (deterministic for a given seed)."""

    seed: int = 0
    rooms: int = 200  # procedural rooms whose situations / questions are included verbatim
    utterances_per_room: int = 3  # "situation + question" strings per room
    templated: bool = True  # add the enumerated templated sentences
    extra_objects: tuple[str, ...] = ()  # more object names (e.g. from a detector) for templates


@dataclass
class Corpus:
    """Sentences of the domain, as word strings (lowercase, no punctuation)."""

    situations: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    utterances: list[str] = field(default_factory=list)  # situation followed by a question

    def sentences(self) -> list[str]:
        """All sentences (the LM training text)."""
        return self.situations + self.questions + self.utterances

    def vocabulary(self) -> list[str]:
        """Sorted distinct words."""
        return sorted({w for s in self.sentences() for w in s.split()})


def words(text: str) -> list[str]:
    """Lowercase word tokens of `text` (punctuation dropped, apostrophes inside words kept)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def normalise(text: str) -> str:
    """`words` joined by single spaces: the form the LM and the recogniser use."""
    return " ".join(words(text))


def object_kinds() -> list[str]:
    """Object names the scenes use."""
    return list(CATALOGUE)


def plural(kind: str) -> str:
    """Plural of an object name, as the scene questions write it ('shelf' -> 'shelves')."""
    if kind.endswith("f"):
        return kind[:-1] + "ves"
    if kind.endswith(("s", "x", "ch", "sh")):
        return kind + "es"
    return kind + "s"


def object_phrases(kind: str) -> list[str]:
    """'the chair', 'the red chair', ... for every colour the kind can have (catalogue kinds)."""
    colours = CATALOGUE[kind].colours if kind in CATALOGUE else ()
    return [f"the {kind}"] + [f"the {colour} {kind}" for colour in colours]


def _kinds(extra_objects: Sequence[str]) -> list[str]:
    """Catalogue kinds followed by the normalised extra object names."""
    extra = [normalise(name) for name in extra_objects]
    return list(dict.fromkeys([*CATALOGUE, *(name for name in extra if name)]))


def situation_templates(extra_objects: Sequence[str] = ()) -> list[str]:
    """Every 'i am <verb> <object> facing <object>' sentence over the catalogue (+ extras)."""
    kinds = _kinds(extra_objects)
    anchors: list[str] = []
    for kind in kinds:
        verbs = ["standing next to"]
        verbs += ["sitting on"] if kind in SITTABLE else []
        verbs += ["lying on"] if kind in LYABLE else []
        anchors += [f"{verb} {phrase}" for verb in verbs for phrase in object_phrases(kind)]
    targets = [phrase for kind in kinds for phrase in object_phrases(kind)]
    return [f"i am {anchor} facing {target}" for anchor in anchors for target in targets]


def question_templates(extra_objects: Sequence[str] = ()) -> list[str]:
    """Spoken question forms (direction, colour, count, distance, compare) over the objects."""
    kinds = _kinds(extra_objects)
    phrases = [p for kind in kinds for p in object_phrases(kind)]
    out = [f"what is {side}" for side in SIDES]
    out += [f"what is the closest object {side}" for side in SIDES[:3]]
    out += ["what is the closest object to me", "what is the nearest object to me"]
    for phrase in phrases:
        out += [f"is {phrase} {side}" for side in SIDES]
        out += [f"how far is {phrase}", f"how far am i from {phrase}", f"where is {phrase}"]
    for kind in kinds:
        out += [
            f"what colour is the {kind}",
            f"how many {plural(kind)} are there",
            f"how many {plural(kind)} are in the room",
            f"is the {kind} on my left on my right in front of me or behind me",
            f"how far am i from the {kind} in metres",
        ]
    out += [f"which is closer the {a} or the {b}" for a, b in itertools.permutations(kinds, 2)]
    return out


def _room_sentences(config: CorpusConfig) -> tuple[list[str], list[str], list[str]]:
    """Situations, questions and combined utterances of procedural rooms (project wording)."""
    situations: list[str] = []
    questions: list[str] = []
    utterances: list[str] = []
    for index in range(config.rooms):
        seed = config.seed * 100_003 + index
        room = generate_room(seed)
        rng = np.random.default_rng(seed)
        situated = make_situation(room, rng)
        if situated is None:
            continue
        records = make_questions(room, situated, rng)
        situation = normalise(situated.text)
        situations.append(situation)
        room_questions = [normalise(r.question) for r in records]
        questions += room_questions
        picks = rng.permutation(len(room_questions))[: config.utterances_per_room]
        utterances += [f"{situation} {room_questions[int(i)]}" for i in picks]
    return situations, questions, utterances


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """The domain corpus: project sentences from procedural rooms plus templated forms."""
    cfg = config or CorpusConfig()
    situations, questions, utterances = _room_sentences(cfg)
    if cfg.templated:
        situations += situation_templates(cfg.extra_objects)
        questions += question_templates(cfg.extra_objects)
    return Corpus(_unique(situations), _unique(questions), _unique(utterances))


def _unique(items: Iterable[str]) -> list[str]:
    """Order-preserving de-duplication."""
    return list(dict.fromkeys(items))
