"""Streamed preference pairs (`aif train --streaming`): each process reads its own part of the stream, and a
resume continues at the next unread pair without reading again what was consumed.

- Split: `datasets.distributed.split_dataset_by_node` gives process r the shards r, r + W, ... when the number of
  shards (files) is a multiple of the process count W; otherwise every process reads the whole stream and keeps
  every W-th row (correct, but each reads everything: prefer a shard count that W divides).
- Shuffle: rows are read in blocks of --shuffle-buffer usable pairs and each block is visited in a permutation
  seeded by (seed, process, epoch, block); rows without a clear winner are dropped (counted in the first epoch).
- Resume: `state()` is the `datasets` state of the stream at the start of the current block (shard and row in
  it), the block's number and how many of its pairs were used; `PairStream(..., state=...)` reopens the stream
  there, reads that one block again and skips the pairs used. Nothing before the block is read again.

Pair k of a process's stream gets its crop, flip and caption dropout from (seed, process, k), so a resumed run
sees the same pixels as an uninterrupted one. A corrupt pair is reported and replaced by the next pair of the
process's own stream (every process keeps its batch size).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

from aifeedback.data.labels import winner_of
from aifeedback.data.pairs import CORRUPT, PairStats, Transform, collate, corrupt_reason, no_pairs_error
from aifeedback.errors import DataError

MAX_UNREADABLE = 1000  # consecutive unreadable pairs before a streamed run stops


class PairStream:
    """This process's endless iterator of micro-batches over a streamed `datasets.IterableDataset` of pairs."""

    def __init__(self, ds: Any, transform: Transform, batch_size: int, rank: int, world: int, seed: int,
                 block: int, stats: PairStats, state: dict[str, Any] | None = None):
        self.ds, self.transform, self.b = ds, transform, batch_size
        self.rank, self.world, self.seed, self.block, self.stats = rank, world, seed, block, stats
        self.pos = {"epoch": 0, "block": 0, "source": None, "taken": 0, "pairs": 0}  # see state()
        if state is not None:
            self.pos.update(state)
        self._pairs = self._iter_pairs()

    def state(self) -> dict[str, Any]:
        """Where the next pair comes from (JSON-able; stored per process in a checkpoint)."""
        return copy.deepcopy(self.pos)

    def __iter__(self) -> "PairStream":
        return self

    def __next__(self) -> dict[str, Any]:
        items, skipped = [], []
        while len(items) < self.b:
            k, row, winner = next(self._pairs)
            try:
                item = self.transform(row, winner, self._rng(k))
            except CORRUPT as e:  # a corrupt image: report it and use the next pair of this process's stream
                skipped.append((k, corrupt_reason(e)))
                if len(skipped) > MAX_UNREADABLE:  # a stream of nothing but broken images: say so, do not spin
                    raise DataError(f"{len(skipped)} unreadable pairs in a row in the streamed dataset: "
                                    + "; ".join(f"stream pair {r}: {why}" for r, why in skipped[-3:])) from None
                continue
            item["row"], item["skipped"] = k, skipped
            items.append(item)
            skipped = []
        return collate(items)

    def _rng(self, k: int) -> Any:
        import numpy as np

        return np.random.default_rng([self.seed, 3, self.rank, k])

    def _local(self) -> Any:
        """This process's part of the stream: a fresh object (a loaded state would otherwise restart every epoch)."""
        from datasets.distributed import split_dataset_by_node

        return split_dataset_by_node(self.ds, rank=self.rank, world_size=self.world)

    def _iter_pairs(self) -> Iterator[tuple[int, dict[str, Any], int]]:
        """(pair number, row, winner) forever, epoch after epoch, block after block, updating self.pos."""
        pos = self.pos
        while True:
            local = self._local()
            if pos["source"] is not None:
                local.load_state_dict(pos["source"])
            rows, start, any_pair = iter(local), pos["source"], False
            while True:
                pos["source"] = start  # where the block about to be read starts (None: the epoch's start)
                block = self._read_block(rows)
                start = copy.deepcopy(local.state_dict())  # read after the block: where the next one starts
                if not block:
                    break
                any_pair = True
                yield from self._visit(block)
                pos.update(block=pos["block"] + 1, taken=0)
            if not any_pair and pos["block"] == 0:
                raise no_pairs_error(f"the streamed dataset (process {self.rank} of {self.world})", self.stats)
            pos.update(epoch=pos["epoch"] + 1, block=0, source=None, taken=0)

    def _visit(self, block: list[tuple[dict, int]]) -> Iterator[tuple[int, dict[str, Any], int]]:
        import numpy as np

        pos = self.pos
        order = np.random.default_rng([self.seed, 2, self.rank, pos["epoch"], pos["block"]]).permutation(len(block))
        for i in order[pos["taken"]:]:
            pos["taken"] += 1
            pos["pairs"] += 1
            yield pos["pairs"] - 1, *block[int(i)]

    def _read_block(self, rows: Iterator[dict[str, Any]]) -> list[tuple[dict, int]]:
        """Up to `block` usable pairs (row, winner) from the stream; rows without a clear winner are counted."""
        block: list[tuple[dict, int]] = []
        for row in rows:
            w = winner_of(row.get("label_0"), row.get("label_1"), row.get("has_label"))
            if self.pos["epoch"] == 0:  # counted once, over what this process read since it started
                self.stats.rows += 1
                if w not in (0, 1):
                    self.stats.count(w, self.stats.rows - 1, row.get("label_0"), row.get("label_1"))
            if w in (0, 1):
                block.append((row, w))
                if len(block) == self.block:
                    break
        return block
