"""Errors of the speech front end (both are `Loc3rError`s, so callers reply instead of crashing)."""

from __future__ import annotations

from loc3r.errors import InputError, Loc3rError


class SpeechInputError(InputError):
    """The audio or transcript cannot be used: silent, clipped, too short, no question heard, ..."""


class SpeechBackendError(Loc3rError):
    """A speech backend is unavailable: missing program, package, model directory or model file."""
