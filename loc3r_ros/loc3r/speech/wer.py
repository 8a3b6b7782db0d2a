"""Word error rate: Levenshtein alignment of normalised words (substitutions, deletions, inserts).

Normalisation: lowercase, punctuation dropped, a few contractions expanded ("i'm" -> "i am"),
British spellings mapped to American ones ("colour" -> "color"), and numbers 0-99 written as
words, so "I'm 2 metres away." and "i am two meters away" match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CONTRACTIONS = {
    "i'm": "i am",
    "what's": "what is",
    "where's": "where is",
    "how's": "how is",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "who's": "who is",
}
_SPELLINGS = {
    "colour": "color",
    "colours": "colors",
    "grey": "gray",
    "metre": "meter",
    "metres": "meters",
    "centre": "center",
}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
_ONES += "fifteen sixteen seventeen eighteen nineteen"
_UNITS = _ONES.split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0..99 in words ('42' -> 'forty two'); other numbers as their digits."""
    if 0 <= n < 20:
        return _UNITS[n]
    if 20 <= n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + (f" {_UNITS[ones]}" if ones else "")
    return str(n)


def normalise_words(text: str) -> list[str]:
    """Words of `text` in the comparison form described in the module docstring."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        token = _CONTRACTIONS.get(token, token)
        token = _SPELLINGS.get(token, token)
        if token.isdigit():
            token = number_words(int(token))
        out += token.split()
    return out


@dataclass(frozen=True)
class WerResult:
    """Edit counts of hypotheses against references."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        """Total word errors."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Word errors / reference words (0 for an empty reference and hypothesis)."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_words

    def __add__(self, other: WerResult) -> WerResult:
        return WerResult(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def align(reference: list[str], hypothesis: list[str]) -> WerResult:
    """Minimum-edit alignment of two word lists (dynamic programming, O(len * len))."""
    # cell = (cost, substitutions, deletions, insertions); ties prefer substitutions.
    previous = [(j, 0, 0, j) for j in range(len(hypothesis) + 1)]
    for i, ref_word in enumerate(reference, start=1):
        current = [(i, 0, i, 0)]
        for j, hyp_word in enumerate(hypothesis, start=1):
            diag = previous[j - 1]
            if ref_word == hyp_word:
                best = diag
            else:
                best = (diag[0] + 1, diag[1] + 1, diag[2], diag[3])
            up, left = previous[j], current[j - 1]
            if up[0] + 1 < best[0]:
                best = (up[0] + 1, up[1], up[2] + 1, up[3])
            if left[0] + 1 < best[0]:
                best = (left[0] + 1, left[1], left[2], left[3] + 1)
            current.append(best)
        previous = current
    _, subs, dels, ins = previous[-1]
    return WerResult(subs, dels, ins, len(reference))


def word_errors(reference: str, hypothesis: str) -> WerResult:
    """Edit counts of one hypothesis against its reference, after normalisation."""
    return align(normalise_words(reference), normalise_words(hypothesis))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis."""
    return word_errors(reference, hypothesis).wer


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> WerResult:
    """Pooled edit counts over (reference, hypothesis) pairs (divide by all reference words)."""
    total = WerResult(0, 0, 0, 0)
    for reference, hypothesis in pairs:
        total = total + word_errors(reference, hypothesis)
    return total
