"""Exceptions raised by the CUT3R package (one base class so callers can catch them all)."""

from loc3r.errors import Loc3rError


class Cut3rError(Loc3rError):
    """Base class of every error raised by `loc3r.cut3r`."""


class Cut3rConfigError(Cut3rError, ValueError):
    """A configuration (or an official constructor string) is malformed or unsupported."""


class Cut3rCheckpointError(Cut3rError):
    """A checkpoint cannot be read, is not a CUT3R checkpoint, or does not match the model."""


class UnsafeCheckpointError(Cut3rCheckpointError):
    """A checkpoint references code that must never run while loading (e.g. `os.system`)."""


class Cut3rInputError(Cut3rError, ValueError):
    """An image, tensor or state handed to the model has the wrong type, shape or range."""
