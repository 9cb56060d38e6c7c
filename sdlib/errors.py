"""One exception type for every problem the user can fix.

The CLI prints ``SdlibError`` as one line (what is wrong, what to do) and exits non-zero; anything else
is a bug and keeps its stack trace.
"""


class SdlibError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
