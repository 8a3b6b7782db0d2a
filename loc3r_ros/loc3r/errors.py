"""Errors of the loc3r core that callers (node, CLI) turn into a clear reply, never a traceback."""


class Loc3rError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(Loc3rError, ValueError):
    """The caller's input is malformed (empty or huge text, bad image, bad file)."""


class NotReadyError(Loc3rError):
    """The engine cannot answer yet (no model loaded, no frames yet)."""


class BusyError(Loc3rError):
    """Another query is running and the caller asked not to wait."""
