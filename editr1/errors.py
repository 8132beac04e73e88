"""User-facing error types.

The CLI catches :class:`EditR1Error`, prints its message as one line and exits
non-zero, so messages must be self-contained (say which file, line and field).
"""


class EditR1Error(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class DataError(EditR1Error):
    """A dataset file or image is missing, malformed or unsafe to load."""
