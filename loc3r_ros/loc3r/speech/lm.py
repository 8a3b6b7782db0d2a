"""Domain language model for the recogniser: an ARPA back-off n-gram and a pronunciation dictionary.

The n-gram model is estimated from the corpus sentences by this module (no external LM toolkit):
unigrams with add-k smoothing, higher orders with absolute discounting and back-off weights that
make every conditional distribution sum to one. The dictionary holds only the corpus words, with
pronunciations from CMUdict; a word missing there gets one from a spelling variant (British
"-our"/"-re" spellings) or, for short consonant-only acronyms, letter by letter. Sentences with
a word that still has no pronunciation are left out, so the vocabulary is exactly what the
acoustic model can say.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BOS, EOS = "<s>", "</s>"
_VOWELS = set("aeiouy")


@dataclass(frozen=True)
class LmConfig:
    """Estimation settings of the n-gram model."""

    order: int = 3
    discount: float = 0.5  # absolute discount of seen n-grams of order >= 2 (0 < d < 1)
    unigram_k: float = 0.5  # add-k smoothing of unigrams

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError("order must be >= 1")
        if not 0.0 < self.discount < 1.0:
            raise ValueError("discount must be in (0, 1)")
        if self.unigram_k <= 0:
            raise ValueError("unigram_k must be > 0")


@dataclass
class LanguageModel:
    """Files of a built model and what went into them."""

    arpa_path: Path
    dict_path: Path
    vocabulary: list[str]
    sentences: int
    dropped: list[str] = field(default_factory=list)  # sentences with unpronounceable words


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else -99.0


def ngram_counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[tuple[str, ...]]]:
    """Counts of 1..order-grams over sentences padded with <s> and </s> (index n-1 = n-grams)."""
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    for sentence in sentences:
        tokens = [BOS, *sentence, EOS]
        for n in range(1, order + 1):
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i : i + n])
                if gram != (BOS,):
                    counts[n - 1][gram] += 1
    return counts


def arpa_text(sentences: Iterable[Sequence[str]], config: LmConfig | None = None) -> str:
    """An ARPA back-off model of `sentences` (each a sequence of words)."""
    cfg = config or LmConfig()
    counts = ngram_counts(sentences, cfg.order)
    vocab = sorted({g[0] for g in counts[0]})
    if not vocab or vocab == [EOS]:
        raise ValueError("cannot build a language model from an empty corpus")
    total = sum(counts[0].values())
    k, d = cfg.unigram_k, cfg.discount
    # prob[n-1][gram] = P(last word | history), explicit entries only.
    prob: list[dict[tuple[str, ...], float]] = [
        {(w,): (counts[0][(w,)] + k) / (total + k * len(vocab)) for w in vocab}
    ]
    backoff: list[dict[tuple[str, ...], float]] = [{} for _ in range(cfg.order)]
    for n in range(2, cfg.order + 1):
        by_history: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
        for gram, c in counts[n - 1].items():
            by_history[gram[:-1]][gram[-1]] = c
        level: dict[tuple[str, ...], float] = {}
        for history, followers in by_history.items():
            h_total = sum(followers.values())
            lower_sum = 0.0
            for w, c in followers.items():
                level[(*history, w)] = (c - d) / h_total
                lower_sum += prob[n - 2][(*history[1:], w)]
            left = d * len(followers) / h_total
            denominator = 1.0 - lower_sum
            backoff[n - 2][history] = left / denominator if denominator > 1e-9 else 1.0
        prob.append(level)
    lines = ["\\data\\"]
    lines += [f"ngram {n}={len(prob[n - 1]) + (n == 1)}" for n in range(1, cfg.order + 1)]
    for n in range(1, cfg.order + 1):
        lines += ["", f"\\{n}-grams:"]
        entries = sorted(prob[n - 1].items())
        if n == 1:
            entries = [((BOS,), 0.0), *entries]
        for gram, p in entries:
            line = f"{_log10(p) if gram != (BOS,) else -99.0:.6f} {' '.join(gram)}"
            if n < cfg.order:
                line += f" {_log10(backoff[n - 1].get(gram, 1.0)):.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def load_cmudict(path: str | Path) -> dict[str, list[str]]:
    """CMUdict-format file to word -> pronunciations (variants 'word(2)' merged, order kept)."""
    entries: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split("#", 1)[0].split()
            if len(parts) < 2:
                continue
            word = parts[0].split("(", 1)[0].lower()
            entries[word].append(" ".join(parts[1:]))
    return dict(entries)


def spelling_variants(word: str) -> list[str]:
    """American spellings worth looking up for a British one ('colour' -> 'color')."""
    variants = []
    if "our" in word:
        variants.append(word.replace("our", "or"))
    for tail, new in (("re", "er"), ("res", "ers"), ("ise", "ize"), ("ised", "ized")):
        if word.endswith(tail):
            variants.append(word[: -len(tail)] + new)
    return variants


def pronounce(word: str, cmudict: dict[str, list[str]]) -> list[str]:
    """Pronunciations of `word` (empty list when none can be found)."""
    if word in cmudict:
        return cmudict[word]
    for variant in spelling_variants(word):
        if variant in cmudict:
            return cmudict[variant]
    if word.isalpha() and len(word) <= 4 and not set(word) & _VOWELS:
        letters = [cmudict.get(ch, [None])[0] for ch in word]
        if all(letters):
            return [" ".join(letters)]  # type: ignore[arg-type]
    return []


def build_language_model(
    sentences: Iterable[str],
    out_dir: str | Path,
    cmudict_path: str | Path,
    config: LmConfig | None = None,
) -> LanguageModel:
    """Write `domain.arpa` and `domain.dict` for `sentences` (lowercase word strings) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmudict = load_cmudict(cmudict_path)
    kept: list[list[str]] = []
    dropped: list[str] = []
    lexicon: dict[str, list[str]] = {}
    for sentence in sentences:
        tokens = sentence.split()
        prons = {w: lexicon.get(w) or pronounce(w, cmudict) for w in tokens}
        if not tokens or not all(prons.values()):
            dropped.append(sentence)
            continue
        lexicon.update(prons)
        kept.append(tokens)
    arpa_path, dict_path = out / "domain.arpa", out / "domain.dict"
    arpa_path.write_text(arpa_text(kept, config), encoding="utf-8")
    lines = []
    for word in sorted(lexicon):
        for i, phones in enumerate(lexicon[word]):
            lines.append(f"{word if i == 0 else f'{word}({i + 1})'} {phones}")
    dict_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return LanguageModel(arpa_path, dict_path, sorted(lexicon), len(kept), dropped)
