"""User-facing errors: the CLI prints their message (which names the file, row or field and the fix), no traceback."""

from __future__ import annotations

import errno


class AifError(Exception):
    """Base class of errors caused by input or setup rather than by a bug."""


class DataError(AifError):
    """Bad input data: a missing or empty file, an unknown column, unreadable rows."""


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
    not such a failure. torch.save reports a short write, which is how a full disk shows, as a RuntimeError of its
    zip writer (`[enforce fail at inline_container.cc:...] unexpected pos ...`) with no errno."""
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        cause, fix = _WRITE_ERRNOS[err.errno]
        where = err.filename or path
    elif isinstance(err, RuntimeError) and "inline_container.cc" in str(err):
        detail = str(err).strip().splitlines()[0][:120]
        cause = f"torch could not finish writing it, which is how a full disk shows ({detail})"
        fix, where = _WRITE_ERRNOS[errno.ENOSPC][1], path
    else:
        return None
    fix = fix.format(elsewhere=elsewhere)
    return OutputWriteError(f"could not write {where or 'the output'}: {cause}. Fix: {fix}.")
