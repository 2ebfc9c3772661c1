"""Preference pairs for training: human (Pick-a-Pic) or AI-labelled (`aif score` output) -> (caption, winner, loser).

Every pair source (aifeedback.data.sources) gives the Pick-a-Pic columns (caption, jpg_0, jpg_1, label_0, label_1),
so there is one code path:
1. open the table with the source that reads --dataset (hub id, local Parquet/Arrow folder, `aif score` output),
2. read only the label columns and keep rows with a clear winner (aifeedback.data.labels.winner_of): ties (0.5/0.5)
   are dropped (the paper drops ~12%), malformed labels are counted and reported with their row numbers,
3. visit the kept pairs in a seeded order, one permutation per epoch. Pair number `position` (counted over all
   processes) is a pure function of (seed, position), including its random crop, flip and caption dropout, so a
   run resumed from a saved position sees exactly the batches an uninterrupted run would,
4. per pair, aifeedback.data.transforms: decode + resize + crop (+ flip) both images identically, or use stored
   latents when an `aif score` output carries them at the training resolution (skipping the VAE encoder).
A corrupt image is reported (row and reason) and replaced by the next readable pair of the same global batch, so
every process keeps the same batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from aifeedback.config import shown
from aifeedback.data.labels import LABEL_COLUMNS, PAIR_COLUMNS, manifest_path, winner_of
from aifeedback.data.transforms import LATENT_COLUMNS, Transform, latent_source, stored_latent_shape

__all__ = ["LATENT_COLUMNS", "Transform", "latent_source", "stored_latent_shape"]  # train's names, kept here too
from aifeedback.errors import DataError

# What a corrupt image or latent raises: io.decode_image's ValueError (bad latent bytes too); OSError and
# SyntaxError from PIL while transforming a decoded image.
CORRUPT = (OSError, ValueError, SyntaxError)
COLUMNS = PAIR_COLUMNS + LABEL_COLUMNS
LABELS = LABEL_COLUMNS + ("has_label",)  # what filter_labels reads (has_label: Pick-a-Pic v2 marks unlabelled rows)


def corrupt_reason(e: Exception) -> str:
    """Why a pair could not be read: decode_image's ValueErrors already say it; other errors get their type."""
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


@dataclass
class PairStats:
    """What filtering kept and dropped; printed before training and stored in the run manifest."""

    rows: int = 0
    kept: int = 0
    ties: int = 0
    unlabelled: int = 0  # rows marked has_label=False
    bad_labels: int = 0
    bad_label_examples: list[str] = field(default_factory=list)

    def count(self, verdict: Any, row: int, l0: Any, l1: Any) -> None:
        """Count a row without a clear winner (winner_of's None, 'unlabelled' or 'bad')."""
        if verdict is None:
            self.ties += 1
        elif verdict == "unlabelled":
            self.unlabelled += 1
        else:
            self.add_bad(row, l0, l1)

    def add_bad(self, row: int, l0: Any, l1: Any) -> None:
        self.bad_labels += 1
        if len(self.bad_label_examples) < 5:
            self.bad_label_examples.append(f"row {row}: label_0={shown(l0)}, label_1={shown(l1)}")

    def summary(self, name: str) -> str:
        s = f"{name}: {self.rows} rows, {self.kept} pairs kept, {self.ties} ties dropped"
        if self.unlabelled:
            s += f", {self.unlabelled} unlabelled rows (has_label false) dropped"
        if self.bad_labels:
            s += (f", {self.bad_labels} rows with bad labels dropped (labels must be 1/0, 0/1 or 0.5/0.5; e.g. "
                  + "; ".join(self.bad_label_examples) + ")")
        return s


# ---------------------------------------------------------------------------------------------------------------
# Opening the table

def check_source(data: str, dataset: str) -> None:
    """Fail before any import on a --dataset that cannot be what --data says (see aifeedback.preflight)."""
    from aifeedback.preflight import check_dataset

    if data == "ai" and not manifest_path(dataset).exists():
        raise DataError(f"--data ai needs an `aif score` output folder (or an `aif rl` run's), but {dataset} has no "
                        "manifest.json. Fix: run `aif score` first, or use --data human for a Pick-a-Pic-layout "
                        "dataset")
    check_dataset(dataset, "--dataset")


def open_table(data: str, dataset: str, split: str, streaming: bool = False, unpaired: bool = False,
               columns: list[str] | None = None, pairing: str = "all") -> Any:
    """The labelled pairs (unpaired: labelled images) of `dataset`, read by the source that detects it (or the
    --columns mapping; see aifeedback.data.sources): local Parquet/Arrow files are read in place (`ParquetRows`: row
    groups, memory-mapped; no copy into the `datasets` cache), anything else is a `datasets` Dataset; streaming
    gives an IterableDataset. --split does not apply to an `aif score` output."""
    from aifeedback.data.mapping import parse_columns
    from aifeedback.data.sources import open_pairs  # imports `datasets`: the train preflight imports this module

    check_source(data, dataset)
    table = open_pairs(dataset, split, labels=True, streaming=streaming, unpaired=unpaired,
                       columns=parse_columns(columns), pairing=pairing)
    if streaming or not table.files:
        return table.dataset(streaming)
    wanted = None if unpaired else [c for c in COLUMNS + ("has_label",) + LATENT_COLUMNS if c in table.columns]
    rows = table.rows(wanted)  # unpaired: every column (its latent columns have other names)
    if not len(rows):
        raise table.no_rows_error()
    return rows


def filter_labels(ds: Any, limit: int | None = None) -> tuple[list[tuple[int, int]], PairStats]:
    """Scan the label columns only: [(row, winner index)] of the usable pairs, and the counts."""
    from aifeedback.data.rows import read_columns

    labels = read_columns(ds, [c for c in LABELS if c in ds.column_names])
    stats = PairStats(rows=len(labels["label_0"]))
    keep: list[tuple[int, int]] = []
    has = labels.get("has_label", [None] * stats.rows)
    for row, (l0, l1, h) in enumerate(zip(labels["label_0"], labels["label_1"], has, strict=True)):
        w = winner_of(l0, l1, h)
        if w not in (0, 1):
            stats.count(w, row, l0, l1)
        elif limit is None or len(keep) < limit:
            keep.append((row, w))
    stats.kept = len(keep)
    return keep, stats


def no_pairs_error(dataset: str, stats: PairStats) -> DataError:
    """The error for an empty dataset after filtering, saying why."""
    return DataError(
        f"no usable preference pairs in {dataset}: {stats.summary('it has')}. "
        "Fix: use a split with labelled pairs (label_0/label_1 = 1/0 or 0/1), or rescore with `aif score`"
    )


# ---------------------------------------------------------------------------------------------------------------
# Seeded order over positions

class PairDataset:
    """Map-style dataset over global positions 0, 1, 2, ... (epochs repeat with a fresh permutation).

    Item `position` is pair order[epoch][position % n] with its own rng seeded by (seed, position). `window` is the
    number of pairs in one global micro-batch (batch size x processes): a corrupt pair is replaced by the next
    readable pair of its window.
    """

    def __init__(self, ds: Any, pairs: list[tuple[int, int]], transform: Transform, seed: int, window: int):
        self.ds, self.pairs, self.transform, self.seed, self.window = ds, pairs, transform, seed, window
        self._orders: dict[int, Any] = {}  # the permutations of the current and the previous epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def order(self, epoch: int) -> Any:
        """The permutation of the pairs in an epoch (a batch may straddle two epochs: both are kept)."""
        import numpy as np

        if epoch not in self._orders:
            if len(self._orders) == 2:
                del self._orders[min(self._orders)]
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return self._orders[epoch]

    def pair_at(self, position: int) -> tuple[int, int]:
        """(dataset row, winner index) of a global position."""
        epoch, i = divmod(position, len(self.pairs))
        return self.pairs[int(self.order(epoch)[i])]

    def load(self, position: int) -> dict[str, Any]:
        import numpy as np

        row, winner = self.pair_at(position)
        item = self.transform(self.ds[row], winner, np.random.default_rng([self.seed, 1, position]))
        item["row"] = row
        return item

    def __getitem__(self, position: int) -> dict[str, Any]:
        start = position - position % self.window
        skipped = []
        for k in range(self.window):
            p = start + (position - start + k) % self.window
            try:
                item = self.load(p)
            except CORRUPT as e:  # a corrupt image: report it and use the next pair of the window
                skipped.append((self.pair_at(p)[0], corrupt_reason(e)))
                continue
            item["skipped"] = skipped
            return item
        raise DataError(f"every pair of global batch positions {start}..{start + self.window - 1} is unreadable: "
                        + "; ".join(f"row {r}: {why}" for r, why in skipped))


class PositionSampler:
    """Batches of positions for this process: global micro-batch j covers positions [j*B*W, (j+1)*B*W) and process r
    takes its r-th slice of B. Starts at micro-batch `start`, runs forever (the loop stops at max_steps)."""

    def __init__(self, batch_size: int, rank: int, world: int, start: int = 0):
        self.b, self.rank, self.world, self.start = batch_size, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        j = self.start
        while True:
            first = j * self.b * self.world + self.rank * self.b
            yield list(range(first, first + self.b))
            j += 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: winner/loser along dim 1 of pixels (B, 2, 3, H, W), latents (B, 2, C, h, w) or
    cached posteriors (B, 2, 2C, h, w)."""
    import torch

    out: dict[str, Any] = {
        "captions": [it["caption"] for it in items],
        "time_ids": torch.stack([it["time_ids"] for it in items]),
        "rows": [it["row"] for it in items],
        "skipped": [s for it in items for s in it.get("skipped", [])],
    }
    for key in ("latents", "pixels", "posteriors"):  # stored latents, images, or an `aif cache`'s posteriors
        if key in items[0]:
            out[key] = torch.stack([it[key] for it in items])
    if "prompt" in items[0]:  # an `aif cache`'s prompt conditioning
        out["prompts"] = {k: torch.stack([it["prompt"][k] for it in items]) for k in items[0]["prompt"]}
    if "desirable" in items[0]:  # unpaired rows: (B, 1, ...) images and their labels
        out["desirable"] = torch.tensor([it["desirable"] for it in items])
    return out


def batches(dataset: PairDataset, batch_size: int, rank: int, world: int, start_micro: int, num_workers: int,
            seed: int) -> Any:
    """An endless iterator of this process's micro-batches starting at global micro-batch `start_micro`."""
    import torch

    from aifeedback.dist import worker_context

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=PositionSampler(batch_size, rank, world, start_micro), collate_fn=collate,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        multiprocessing_context=worker_context(num_workers),  # workers never import the caller's __main__
        # Own generator: otherwise creating the iterator draws from the global RNG, which a resume would replay
        # at a different point than an uninterrupted run.
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)
