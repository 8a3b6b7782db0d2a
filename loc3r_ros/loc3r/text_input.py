"""Validation of user text (questions and situations) before it reaches a tokenizer."""

from __future__ import annotations

import unicodedata

from loc3r.errors import InputError

DEFAULT_MAX_CHARS = 2000


def clean_text(
    text: str | bytes, *, field: str, max_chars: int = DEFAULT_MAX_CHARS, required: bool = True
) -> str:
    """Return `text` as a normalised single-spaced string, or raise InputError saying why not.

    Accepts str or UTF-8 bytes. Rejects invalid UTF-8, control characters other than whitespace,
    text longer than `max_chars` characters, and (when `required`) empty or blank text.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{field} is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(text, str):
        raise InputError(f"{field} must be text, got {type(text).__name__}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InputError(f"{field} is not valid UTF-8 (lone surrogate)")
    if len(text) > max_chars:
        raise InputError(f"{field} is too long: {len(text)} characters (limit {max_chars})")
    for ch in text:
        if unicodedata.category(ch) == "Cc" and not ch.isspace():
            raise InputError(f"{field} contains a control character (U+{ord(ch):04X})")
    cleaned = " ".join(unicodedata.normalize("NFC", text).split())
    if required and not cleaned:
        raise InputError(f"{field} is empty")
    return cleaned
