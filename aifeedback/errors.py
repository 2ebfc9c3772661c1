"""User-facing errors: the CLI prints their message (which names the file, row or field and the fix), no traceback."""


class AifError(Exception):
    """Base class of errors caused by input or setup rather than by a bug."""


class DataError(AifError):
    """Bad input data: a missing or empty file, an unknown column, unreadable rows."""
