"""The one batched scoring loop, shared by `aif score` (per-image scores of its shards) and `aif eval` (base/tuned
twins, and scorer accuracy on human pairs). Imported when a stage scores (it imports torch), never by the CLI.

Work comes as groups of images: an `aif score` shard, or one batch of eval twins or human pairs. A group is the unit
split between processes (round-robin: this process takes groups rank, rank + world, ...) and between DataLoader
workers (a worker takes whole groups, so its reads of a file stay contiguous). A group holds one or more parts
(eval: the base images, then their tuned twins) and each part is cut into batches of `batch_size` on its own, so a
twin goes through each scorer in an identically shaped batch, and no batch, hence no float, depends on the number
of processes or workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count, islice
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch.utils.data

from aifeedback.data.images import decode_image
from aifeedback.dist import worker_context

Item = tuple[Any, Any, str]  # (key, source, prompt): `read` turns a batch of sources into images


@dataclass
class ImageGroup:
    """Images scored by one process, in order: parts of (key, source, prompt) items, each batched on its own."""

    id: int
    parts: list[list[Item]]


@dataclass
class Scored:
    """One batch's result: per image its key, its scores (one per scorer) or None and the reason it was unreadable.
    `done` marks the group's last batch: a group's batches arrive in order, from the one worker that loads it."""

    group: ImageGroup
    keys: list[Any]
    scores: list[list[float] | None]
    errors: list[str | None]
    done: bool


class TableImages:
    """`read` for (row, column) sources of a table with `take(rows, columns)` (`aifeedback.scoring.inputs` rows)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, sources: list[tuple[int, str]]) -> list[Any]:
        rows = sorted({r for r, _ in sources})
        cols = sorted({c for _, c in sources})
        fetched = dict(zip(rows, self.rows.take(rows, cols), strict=True))
        return [fetched[r][c] for r, c in sources]


def given(sources: list[Any]) -> list[Any]:
    """`read` for sources that are the images (or their bytes) themselves."""
    return list(sources)


class GroupImages(torch.utils.data.IterableDataset):
    """Iterable over batches of decoded + transformed images; each DataLoader worker takes whole groups.

    Yields dicts: group, part, start (offset of the batch in the part), done (the group's last batch), items (one
    per transform, only for the images that decoded: a stacked tensor, or a list when the outputs are not
    same-shaped tensors), errors (None or a message per image). An empty group yields one empty batch.
    """

    def __init__(self, read: Callable[[list], list], groups: Iterable[ImageGroup], transforms: list, batch_size: int):
        self.read, self.groups, self.transforms, self.batch_size = read, groups, transforms, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for group in islice(self.groups, wid, None, nw):
            spans = [(p, s) for p, part in enumerate(group.parts) for s in range(0, len(part), self.batch_size)]
            if not spans:
                yield {"group": group, "part": 0, "start": 0, "done": True,
                       "items": [[] for _ in self.transforms], "errors": []}
            for n, (p, start) in enumerate(spans):
                part = group.parts[p][start : start + self.batch_size]
                yield {"group": group, "part": p, "start": start, "done": n == len(spans) - 1, **self._load(part)}

    def _load(self, part: list[Item]) -> dict[str, Any]:
        items: list[list] = [[] for _ in self.transforms]
        errors: list[str | None] = []
        for value in self.read([source for _, source, _ in part]):
            try:
                image = decode_image(value, rgb=False)  # each transform converts
                outs = [t(image) for t in self.transforms]
            except ValueError as e:
                errors.append(str(e))
                continue
            except (OSError, RuntimeError) as e:  # a transform choking on an odd image must not kill the run
                errors.append(f"cannot preprocess image: {type(e).__name__}: {e}")
                continue
            errors.append(None)
            for lst, out in zip(items, outs, strict=True):
                lst.append(out)
        # Stack same-shaped tensors here, in the worker, so the main process only moves one tensor to the device.
        items = [torch.stack(lst) if lst and all(isinstance(t, torch.Tensor) for t in lst)
                 and len({t.shape for t in lst}) == 1 else lst for lst in items]
        return {"items": items, "errors": errors}


def pair_groups(pairs: Iterable[tuple[Any, tuple[Any, Any], str]], size: int) -> Iterator[ImageGroup]:
    """Groups of `size` pairs (key, (source_0, source_1), prompt): side 0 of each pair, then side 1, each its own
    part, so both images of a pair are scored in identically shaped batches (identical twins tie bit for bit).
    Item keys are (pair key, side). Lazy: the pairs may be a stream."""
    it = iter(pairs)
    for g in count():
        batch = list(islice(it, size))
        if not batch:
            return
        yield ImageGroup(g, [[((key, side), sources[side], prompt) for key, sources, prompt in batch]
                             for side in (0, 1)])


def passthrough(batch: Any) -> Any:
    """DataLoader collate_fn for already-batched items."""
    return batch


def shared_transforms(scorers: Sequence) -> tuple[list, list[int]]:
    """The distinct preprocessings of the scorers, and each scorer's index into them: scorers sharing one (clip,
    hpsv2) share its output, so each image is decoded and preprocessed once."""
    transforms: list = []
    for s in scorers:
        if s.transform not in transforms:
            transforms.append(s.transform)
    return transforms, [transforms.index(s.transform) for s in scorers]


def image_batches(groups: Iterable[ImageGroup], read: Callable[[list], list], transforms: list, batch_size: int, *,
                  workers: int = 0, pin_memory: bool = False, share: tuple[int, int] = (0, 1)) -> Iterable[dict]:
    """This process's share of the groups as batches of preprocessed images (see GroupImages), decoded in
    `workers` DataLoader processes (0 = in this process; groups are then read lazily, so they may be a stream)."""
    rank, world = share
    mine = islice(groups, rank, None, world)
    if workers:  # worker processes get the dataset, so its groups must be a list
        mine = list(mine)
    return torch.utils.data.DataLoader(
        GroupImages(read, mine, transforms, batch_size), batch_size=None, num_workers=workers,
        multiprocessing_context=worker_context(workers), collate_fn=passthrough, prefetch_factor=4 if workers else None,
        pin_memory=pin_memory,  # page-locked batches: the copy to the GPU is asynchronous
    )


def score_groups(groups: Iterable[ImageGroup], read: Callable[[list], list], scorers: Sequence, batch_size: int, *,
                 workers: int = 0, pin_memory: bool = False, share: tuple[int, int] = (0, 1),
                 bar: Any = None) -> Iterator[Scored]:
    """Score this process's share of the groups with every (loaded) scorer, one batch at a time.

    read: sources -> images or image bytes (TableImages, given, ...); share: (this process's rank, world size);
    bar: a progress bar advanced by the images of each batch. Unreadable images get scores None and their reason.
    """
    transforms, which = shared_transforms(scorers)
    for batch in image_batches(groups, read, transforms, batch_size, workers=workers, pin_memory=pin_memory,
                               share=share):
        errors = batch["errors"]
        part = batch["group"].parts[batch["part"]][batch["start"] : batch["start"] + len(errors)]
        ok = [j for j, e in enumerate(errors) if e is None]
        scores: list[list[float] | None] = [None] * len(errors)
        if ok:
            prompts = [part[j][2] for j in ok]
            cols = [scorer.score_items(batch["items"][which[s]], prompts) for s, scorer in enumerate(scorers)]
            for n, j in enumerate(ok):
                scores[j] = [float(c[n]) for c in cols]
        if bar is not None:
            bar.update(len(errors))
        yield Scored(batch["group"], [key for key, _, _ in part], scores, errors, batch["done"])
