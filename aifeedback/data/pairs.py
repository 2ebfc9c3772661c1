"""Preference pairs for training: human (Pick-a-Pic) or AI-labelled (`aif score` output) -> (caption, winner, loser).

Both sources share the Pick-a-Pic layout (caption, jpg_0, jpg_1, label_0, label_1) and one code path:
1. open the table (hub id, local Parquet/Arrow folder, or an `aif score` output dir),
2. read only the label columns and keep rows with a clear winner: ties (0.5/0.5) are dropped (the paper drops
   ~12%) and malformed labels are counted and reported with their row numbers,
3. visit the kept pairs in a seeded order, one permutation per epoch. Pair number `position` (counted over all
   processes) is a pure function of (seed, position), including its random crop, flip and caption dropout, so a
   run resumed from a saved position sees exactly the batches an uninterrupted run would,
4. per pair: decode + resize + crop (+ flip) both images identically, or use stored latents when an `aif score`
   output carries them at the training resolution (skipping the VAE encoder).
A corrupt image is reported (row and reason) and replaced by the next readable pair of the same global batch, so
every process keeps the same batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from aifeedback.data.images import decode_image
from aifeedback.errors import DataError

# What a corrupt image or latent raises: io.decode_image's ValueError (bad latent bytes too); OSError and
# SyntaxError from PIL while transforming a decoded image.
CORRUPT = (OSError, ValueError, SyntaxError)
COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
LATENT_COLUMNS = ("latent_0", "latent_1", "latent_shape")


def corrupt_reason(e: Exception) -> str:
    """Why a pair could not be read: decode_image's ValueErrors already say it; other errors get their type."""
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


@dataclass
class PairStats:
    """What filtering kept and dropped; printed before training and stored in the run manifest."""

    rows: int = 0
    kept: int = 0
    ties: int = 0
    bad_labels: int = 0
    bad_label_examples: list[str] = field(default_factory=list)

    def add_bad(self, row: int, l0: Any, l1: Any) -> None:
        self.bad_labels += 1
        if len(self.bad_label_examples) < 5:
            self.bad_label_examples.append(f"row {row}: label_0={l0!r}, label_1={l1!r}")

    def summary(self, name: str) -> str:
        s = f"{name}: {self.rows} rows, {self.kept} pairs kept, {self.ties} ties dropped"
        if self.bad_labels:
            s += (f", {self.bad_labels} rows with bad labels dropped (labels must be 1/0, 0/1 or 0.5/0.5; e.g. "
                  + "; ".join(self.bad_label_examples) + ")")
        return s


def winner_of(l0: Any, l1: Any) -> int | None | str:
    """0 or 1 for a clear winner, None for a tie, 'bad' for anything else (NaN, missing, inconsistent)."""
    try:
        a, b = float(l0), float(l1)
    except (TypeError, ValueError):
        return "bad"
    if math.isnan(a) or math.isnan(b):
        return "bad"
    if (a, b) == (1.0, 0.0):
        return 0
    if (a, b) == (0.0, 1.0):
        return 1
    if a == b == 0.5:
        return None
    return "bad"


# ---------------------------------------------------------------------------------------------------------------
# Opening the table

def check_source(data: str, dataset: str) -> None:
    """Fail before any import on a --dataset that cannot be what --data says (see aifeedback.preflight)."""
    from aifeedback.preflight import check_dataset

    if data == "ai" and not (Path(dataset) / "manifest.json").exists():
        raise DataError(f"--data ai needs an `aif score` output folder, but {dataset} has no manifest.json. Fix: run "
                        "`aif score` first, or use --data human for a Pick-a-Pic-layout dataset")
    check_dataset(dataset, "--dataset")


def open_table(data: str, dataset: str, split: str, streaming: bool = False) -> Any:
    """A `datasets` Dataset (or IterableDataset when streaming) in the Pick-a-Pic layout."""
    import datasets

    path = Path(dataset)
    try:
        check_source(data, dataset)
        if data == "ai" or (path / "manifest.json").exists():
            from aifeedback.storage.manifest import read_manifest
            from aifeedback.storage.shards import shard_files

            read_manifest(path, "score")  # an `aif score` output: refuse anything else with a clear message
            files = [str(p) for p in shard_files(path)]
            if not files:
                raise DataError(f"{path} has no data/train-*.parquet shards: the `aif score` run did not finish; rerun it")
            ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
        elif path.is_dir():
            ds = _open_local(path, split, streaming)
        elif path.exists():
            raise DataError(f"--dataset {dataset} is a file; pass the folder holding the Parquet/Arrow files")
        else:
            ds = datasets.load_dataset(dataset, split=split, streaming=streaming)
    except DataError:
        raise
    except ValueError as e:  # unknown split, mostly
        raise DataError(f"could not open split '{split}' of {dataset}: {e}. Fix: pass --split with one of its splits") from None
    except (OSError, FileNotFoundError, ConnectionError) as e:
        raise DataError(
            f"could not load dataset '{dataset}': {str(e).splitlines()[0] if str(e) else type(e).__name__}. Fix: check "
            "the hub id (e.g. yuvalkirstain/pickapic_v2, kashif/pickascore) or pass a local Parquet/Arrow folder; "
            "offline, download it first with `hf download --repo-type dataset ID`"
        ) from None
    columns = ds.column_names or (list(ds.features) if getattr(ds, "features", None) else None)
    if columns is not None:
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise DataError(
                f"{dataset} lacks the Pick-a-Pic column(s) {', '.join(missing)} (it has: {', '.join(columns)}). "
                "Fix: rename the columns to caption, jpg_0, jpg_1, label_0, label_1"
            )
    return ds


def _open_local(path: Path, split: str, streaming: bool) -> Any:
    import datasets

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():  # Dataset.save_to_disk
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path} has splits {', '.join(ds)}, not '{split}'. Fix: pass --split")
            ds = ds[split]
        return ds.to_iterable_dataset() if streaming else ds
    for ext, builder in (("parquet", "parquet"), ("arrow", "arrow")):
        if any(path.rglob(f"*.{ext}")):
            dd = datasets.load_dataset(builder, data_dir=str(path), streaming=streaming)
            if split not in dd:
                if len(dd) == 1:  # a folder without split names: its only split is the data
                    return next(iter(dd.values()))
                raise DataError(f"{path} has splits {', '.join(dd)}, not '{split}'. Fix: pass --split")
            return dd[split]
    raise DataError(f"{path} holds no .parquet or .arrow files. Fix: pass a Pick-a-Pic-layout Parquet/Arrow folder")


def filter_labels(ds: Any, limit: int | None = None) -> tuple[list[tuple[int, int]], PairStats]:
    """Scan the label columns only: [(row, winner index)] of the usable pairs, and the counts."""
    labels = ds.select_columns(["label_0", "label_1"]).to_dict()
    stats = PairStats(rows=len(labels["label_0"]))
    keep: list[tuple[int, int]] = []
    for row, (l0, l1) in enumerate(zip(labels["label_0"], labels["label_1"])):
        w = winner_of(l0, l1)
        if w is None:
            stats.ties += 1
        elif w == "bad":
            stats.add_bad(row, l0, l1)
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
# One pair -> tensors

@dataclass
class Transform:
    """Per-pair preprocessing; all randomness comes from the numpy Generator passed in."""

    resolution: int
    random_crop: bool = False
    flip: bool = False
    caption_dropout: float = 0.0
    latent_shape: tuple[int, ...] | None = None  # use stored latents of this shape instead of images

    def __call__(self, row: dict[str, Any], winner: int, rng: Any) -> dict[str, Any]:
        import torch

        caption = row["caption"]
        if not isinstance(caption, str):  # reported with the row and replaced, like a corrupt image
            raise ValueError(f"caption is {type(caption).__name__}, not text")
        # Draw every random number up front, in a fixed order, so the stream does not depend on the branch taken.
        drop, u, v, flip = rng.random(), rng.random(), rng.random(), rng.random()
        if drop < self.caption_dropout:
            caption = ""
        order = (winner, 1 - winner)
        r = self.resolution
        if self.latent_shape is not None:
            from aifeedback.storage.shards import bytes_to_latent

            lat = torch.stack([bytes_to_latent(row[f"latent_{i}"], row["latent_shape"]) for i in order])
            ids = torch.tensor([[r, r, 0, 0, r, r]] * 2, dtype=torch.float32)
            return {"caption": caption, "latents": lat, "time_ids": ids}
        pixels, ids = [], []
        for i in order:
            img = decode_image(row[f"jpg_{i}"])
            t, tid = self.image(img, u, v, flip < 0.5 and self.flip)
            pixels.append(t)
            ids.append(tid)
        return {"caption": caption, "pixels": torch.stack(pixels), "time_ids": torch.tensor(ids, dtype=torch.float32)}

    def image(self, img: Any, u: float, v: float, flip: bool) -> tuple[Any, list[int]]:
        """Resize the short side to the resolution, crop a square (random at (u, v) or centre), maybe flip."""
        import numpy as np
        import torch
        from PIL import Image

        from aifeedback.families.base import time_ids

        r = self.resolution
        w0, h0 = img.size
        s = r / min(w0, h0)
        w, h = max(r, round(w0 * s)), max(r, round(h0 * s))
        img = img.resize((w, h), Image.BICUBIC)
        top, left = (round(u * (h - r)), round(v * (w - r))) if self.random_crop else ((h - r) // 2, (w - r) // 2)
        img = img.crop((left, top, left + r, top + r))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            left = w - left - r  # what was cut away on the left of the image the model sees
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return x, time_ids((h0, w0), (top, left), (r, r))


def latent_source(dataset: str) -> dict[str, Any] | None:
    """The model and VAE that made an `aif score` output's stored latents (recorded from the generate manifest)."""
    from aifeedback.storage.files import read_json
    from aifeedback.storage.manifest import MANIFEST

    path = Path(dataset) / MANIFEST
    return read_json(path).get("inputs", {}).get("latents_from") if path.exists() else None


def stored_latent_shape(ds: Any, pairs: list[tuple[int, int]], expected: tuple[int, ...],
                        made_by: dict[str, Any] | None = None,
                        model: dict[str, Any] | None = None) -> tuple[tuple[int, ...] | None, str]:
    """expected if every kept row stores latents of that shape, made by this model and VAE (so the VAE encoder can
    be skipped), else None and why not. made_by / model: {"model": ..., "vae": ...} of the latents / of training."""
    if not all(c in ds.column_names for c in LATENT_COLUMNS):
        return None, "the dataset stores no latents (generate with --save-latents to skip the VAE encoder)"
    if made_by is not None and model is not None and made_by != model:
        # Same shape is not enough: SDXL and SD1.5 latents at 512 px are both 4x64x64, in different spaces.
        return None, (f"the stored latents were made by model {made_by['model']} (vae {made_by.get('vae')}), training "
                      f"uses {model['model']} (vae {model.get('vae')}); encoding the images with the VAE instead")
    shapes = ds.select_columns(["latent_shape"]).to_dict()["latent_shape"]
    for row, _ in pairs:
        if shapes[row] is None or tuple(shapes[row]) != tuple(expected):
            return None, (f"row {row} stores a latent of shape {shapes[row]}, training needs {list(expected)} "
                          "at this resolution; encoding the images with the VAE instead")
    return tuple(expected), f"using the stored latents {list(expected)} (VAE encoder skipped)"


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

    def __len__(self) -> int:
        return len(self.pairs)

    @lru_cache(maxsize=2)
    def order(self, epoch: int) -> Any:
        import numpy as np

        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

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
    """Stack items into a batch: winner/loser along dim 1 of pixels (B, 2, 3, H, W) or latents (B, 2, C, h, w)."""
    import torch

    out: dict[str, Any] = {
        "captions": [it["caption"] for it in items],
        "time_ids": torch.stack([it["time_ids"] for it in items]),
        "rows": [it["row"] for it in items],
        "skipped": [s for it in items for s in it.get("skipped", [])],
    }
    key = "latents" if "latents" in items[0] else "pixels"
    out[key] = torch.stack([it[key] for it in items])
    return out


def batches(dataset: PairDataset, batch_size: int, rank: int, world: int, start_micro: int, num_workers: int,
            seed: int) -> Any:
    """An endless iterator of this process's micro-batches starting at global micro-batch `start_micro`."""
    import torch

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=PositionSampler(batch_size, rank, world, start_micro), collate_fn=collate,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        # Own generator: otherwise creating the iterator draws from the global RNG, which a resume would replay
        # at a different point than an uninterrupted run.
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def stream_batches(ds: Any, transform: Transform, batch_size: int, rank: int, world: int, start_micro: int,
                   seed: int, shuffle_buffer: int, stats: PairStats) -> Iterator[dict[str, Any]]:
    """The streaming counterpart of `batches` for datasets too large to download (`--streaming`).

    The stream is shuffled with a seeded buffer and epoch; rows without a clear winner are dropped (and counted);
    every process reads the same stream and keeps its slice of each global micro-batch. Resuming skips the
    already-consumed pairs (reading, not decoding them).
    """
    window = batch_size * world
    position, epoch, skip = 0, 0, start_micro * window
    buf: list[tuple[dict, int, int]] = []
    while True:
        ds_epoch = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        ds_epoch.set_epoch(epoch)
        any_row = False
        for row_i, row in enumerate(ds_epoch):
            any_row = True
            w = winner_of(row.get("label_0"), row.get("label_1"))
            if w is None or w == "bad":
                if epoch == 0:
                    if w is None:
                        stats.ties += 1
                    else:
                        stats.add_bad(row_i, row.get("label_0"), row.get("label_1"))
                continue
            if position < skip:
                position += 1
                continue
            buf.append((row, w, position))
            position += 1
            if len(buf) == window:
                yield _stream_batch(buf, transform, batch_size, rank, seed)
                buf = []
        if not any_row or (epoch == 0 and position == 0):
            raise no_pairs_error("the streamed dataset", stats)
        epoch += 1


def _stream_batch(buf: list, transform: Transform, b: int, rank: int, seed: int) -> dict[str, Any]:
    import numpy as np

    items = []
    for k in range(rank * b, rank * b + b):
        skipped = []
        for j in range(len(buf)):
            row, w, pos = buf[(k + j) % len(buf)]
            try:
                item = transform(row, w, np.random.default_rng([seed, 1, pos]))
            except CORRUPT as e:
                skipped.append((pos, corrupt_reason(e)))
                continue
            item["row"], item["skipped"] = pos, skipped
            items.append(item)
            break
        else:
            raise DataError("every pair of a streamed global batch is unreadable: " + "; ".join(f"{r}: {w}" for r, w in skipped))
    return collate(items)
