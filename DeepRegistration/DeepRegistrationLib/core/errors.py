"""Errors the library raises for bad input, so callers can show them plainly."""


class InputError(ValueError):
    """An input image, transform, model file or option cannot be used; nothing was written."""


class Cancelled(RuntimeError):
    """The user cancelled a long-running operation; no output was written."""
