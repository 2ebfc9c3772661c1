"""`aif inspect`'s settings: `InspectConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/inspect.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option
from aifeedback.data.labels import COLUMNS_HELP, RANKED_HELP, RANKED_PAIRINGS
from aifeedback.data.mapping import columns_problems


@dataclass
class InspectConfig:
    """Settings of `aif inspect`."""

    dataset: str = option("", "preference pairs to look at: a local folder or file (read offline) or a hub id (read "
                              "streaming: needs the network)", positional=True, path=True)
    out: str = option("inspect", "output folder: inspect.html (example pairs), summary.json, manifest.json",
                      identity=False)
    split: Optional[str] = option(None, "dataset split (as `aif train --split`); null = every file of a local "
                                        "folder, the only split of a hub id")
    columns: list[str] = option([], COLUMNS_HELP)
    ranked_pairs: Literal[RANKED_PAIRINGS] = option("all", RANKED_HELP)
    limit: Optional[int] = option(None, "count only the first N rows (a quick look at a large or hub set)", min=1)
    examples: int = option(8, "example pairs shown in inspect.html, sampled among the pairs with a clear winner",
                           min=0)
    seed: int = option(0, "seed of the examples' sample")
    thumb: int = option(192, "longest side of the images in inspect.html, px", min=16, identity=False)
    against: Optional[str] = option(None, "leakage check: a test set (any layout, local or hub id) whose prompts "
                                          "(exact and case/whitespace-normalised) and byte-identical images are "
                                          "looked for in DATASET; counts and examples in the report", path=True)
    against_split: Optional[str] = option(None, "split of --against (as --split; null = every file)")
    fail_on_leak: bool = option(False, "exit with an error (after writing the report) when --against finds a "
                                       "shared prompt or image")
    overwrite: bool = option(False, "replace another output in --out", identity=False)
    progress: bool = option(True, "accepted for a uniform command line; inspect draws no progress bar",
                            identity=False)

    def validate(self) -> list[str]:
        problems = [] if self.dataset else ["dataset: pass the folder, file or hub id to inspect"]
        if self.fail_on_leak and not self.against:
            problems.append("fail_on_leak: needs --against TEST_DATA (the set to check DATASET against)")
        return problems + columns_problems(self.columns)

    def preflight(self) -> None:
        """Fail fast: the dataset path or hub id, and an --out apart from it."""
        from aifeedback.preflight import check_apart, check_dataset

        check_dataset(self.dataset, "dataset")
        if self.against:
            check_dataset(self.against, "--against")
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
