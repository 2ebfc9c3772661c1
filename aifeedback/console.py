"""What every stage prints: quiet third-party libraries, progress bars that suit a terminal or a log, a closing summary.

- `quiet_libraries()`: diffusers / transformers / huggingface_hub / datasets log only errors and draw no loading
  bars, so a stage's own lines stay readable. AIF_VERBOSE=1 leaves the libraries' own settings alone.
- `progress(...)`: a stage's own bar. On a terminal, an ordinary tqdm bar; when stderr is not a terminal (a file,
  CI), one plain line at most every AIF_PROGRESS_INTERVAL seconds (default 30) and no carriage returns.
- `note(msg)`: a line on stderr that does not break a running bar.
- `finish(...)`: the closing paragraph naming the output, its counts and the natural next command(s), on stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm as _tqdm

VERBOSE_ENV = "AIF_VERBOSE"
INTERVAL_ENV = "AIF_PROGRESS_INTERVAL"
LOG_INTERVAL = 30.0  # seconds between progress lines in a log: frequent enough to see progress, few enough to read
NOISY_LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "datasets")
_nested = 0  # > 0 while a stage runs inside another (eval's generate, the demo's stages)


def verbose() -> bool:
    """True when AIF_VERBOSE asks for the third-party libraries' own logging and bars."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_libraries() -> None:
    """Let the ML libraries log errors only and hide their loading bars (unless AIF_VERBOSE=1).

    Idempotent and cheap: it imports no heavy library. Libraries not imported yet read the environment variables
    when they are; the ones already imported are switched directly. Call it again after importing diffusers,
    whose bars have no environment switch.
    """
    if verbose():
        return
    for var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "DATASETS_VERBOSITY"):
        os.environ[var] = "error"
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ[var] = "1"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)  # what each library's set_verbosity_error() does
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        if module in sys.modules:
            sys.modules[module].disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars  # light; transformers copies this state on import

    disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def interactive() -> bool:
    """Whether stderr is a terminal: the one place that decides between redrawn bars and plain log lines."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _LogLines:
    """A stream for tqdm in a log: each redraw becomes one plain line; clears and cursor moves are dropped."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\x1b[A", "").split("\r")[-1].strip()
        count = line.rsplit(" [", 1)[0]  # "desc: n/total unit (p%)": a redraw with no new progress adds no line
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(_tqdm):
    """tqdm for a log: a new postfix (train's loss, every step) waits for the next timed line instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(iterable: Any = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar for a stage's own work (kwargs as for tqdm); disabled when not `enabled` (--no-progress, rank > 0)."""
    if not interactive():
        interval = float(os.environ.get(INTERVAL_ENV) or LOG_INTERVAL)
        kwargs.update(file=_LogLines(sys.stderr), mininterval=interval, maxinterval=max(interval, 10.0),
                      dynamic_ncols=False, ascii=True)
        total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
        known = "/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, " if total else " {unit} [{elapsed}, "
        kwargs["bar_format"] = "{desc}: {n_fmt}" + known + "{rate_fmt}{postfix}]"
        return _LogBar(iterable, disable=not enabled, **kwargs)  # not tqdm.auto: a notebook widget ignores `file`
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled, **kwargs)


def note(msg: str) -> None:
    """One line on stderr that leaves a running progress bar intact."""
    _tqdm.write(msg, file=sys.stderr)


@contextlib.contextmanager
def nested() -> Iterator[None]:
    """Within this block a stage runs as part of another: its summary leaves out the next command."""
    global _nested
    _nested += 1
    try:
        yield
    finally:
        _nested -= 1


def running_nested() -> bool:
    """Whether a stage runs inside another now (`nested`)."""
    return _nested > 0


def finish(stage: str, out: Path | str, what: str, *next_steps: str) -> str:
    """Print and return the closing paragraph: 'STAGE: WHAT -> OUT' and, unless nested, the next command(s)."""
    lines = [f"aif {stage} done: {what} -> {out}"]
    if not _nested:
        lines += [f"  next: {step}" for step in next_steps]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
