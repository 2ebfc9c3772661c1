"""User-facing errors: the CLI prints their message (which names the file, row or field and the fix), no traceback."""

from __future__ import annotations

import errno
import os


class AifError(Exception):
    """Base class of errors caused by input or setup rather than by a bug."""


class DataError(AifError):
    """Bad input data: a missing or empty file, an unknown column, unreadable rows."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for "Details:" in our errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class OutputWriteError(AifError):
    """An output could not be written for a reason outside the program: a full or read-only disk, a file in the way."""


# errno -> (what happened, the fix); other OSErrors are left alone: they are bugs or need their own message.
_WRITE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space on that disk, or {elsewhere}"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, or {elsewhere}"),
    errno.EROFS: ("the file system is read-only", "{elsewhere}"),
    errno.EACCES: ("permission denied", "fix the folder's permissions, or {elsewhere}"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions, or {elsewhere}"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "{elsewhere} (a folder path)"),
}


def write_error(err: BaseException, path: object = None, elsewhere: str = "choose another --out") -> AifError | None:
    """The clear error for an output that failed to be written (naming err's path, else `path`), or None when err is
    not such a failure (a bug keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        code, where = err.errno, err.filename or path
    else:  # pyarrow, for one, may raise an OSError without an errno
        code, where = _errno_in_message(str(err)), path
    if code in _WRITE_ERRNOS:
        cause, fix = _WRITE_ERRNOS[code]
    elif "inline_container.cc" in str(err) and "unexpected pos" in str(err):
        # torch.save's zip writer reports a short write, which is how a full disk shows, with no errno
        cause, fix = "torch could not finish writing it, which is how a full disk shows", _WRITE_ERRNOS[errno.ENOSPC][1]
    else:
        return None
    if not isinstance(err, OSError) or err.errno not in _WRITE_ERRNOS:  # the library's own words, for the record
        cause += f" ({str(err).strip().splitlines()[0][:160]})"
    fix = fix.format(elsewhere=elsewhere)
    return OutputWriteError(f"could not write {where or 'the output'}: {cause}. Fix: {fix}.")


def _errno_in_message(message: str) -> int | None:
    """The errno that libraries which raise their own exception types spell out only in words: safetensors' Rust
    writer ('Read-only file system (os error 30)'), torch.save ('open file failed with strerror: ...')."""
    return next((code for code in _WRITE_ERRNOS if os.strerror(code) in message), None)
