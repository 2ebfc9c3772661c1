"""Parquet shards of a stage's output: data/train-NNNNN.parquet, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from aifeedback.storage.publish import publishing

SHARD_DIR = "data"


def shard_path(out_dir: str | Path, index: int) -> Path:
    """Final path of shard `index`."""
    return Path(out_dir) / SHARD_DIR / f"train-{index:05d}.parquet"


def shard_done(out_dir: str | Path, index: int) -> bool:
    """Whether shard `index` was completely written."""
    return shard_path(out_dir, index).exists()


def write_shard(out_dir: str | Path, index: int, rows: list[dict[str, Any]], schema=None) -> Path:
    """Write rows as shard `index` atomically (see storage.publish).

    A shard with no rows (every pair of its prompts dropped, say) is still written, so a rerun counts it as done,
    but with no row group at all: `datasets` reads a Parquet file's row groups in batches of the first group's
    size, and a 0-row group makes that 0 (ArrowInvalid "BatchSize must be greater than 0"); it skips a file with
    none. The file keeps the schema, so readers still see the columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = shard_path(out_dir, index)
    table = pa.Table.from_pylist(rows, schema=schema)
    with publishing(path, replace=True) as tmp:
        if rows:
            pq.write_table(table, tmp)
        else:
            pq.ParquetWriter(tmp, table.schema).close()
    return path


def shard_files(out_dir: str | Path) -> list[Path]:
    """The complete shards of an output directory, in order."""
    return sorted((Path(out_dir) / SHARD_DIR).glob("train-*.parquet"))


def read_rows(out_dir: str | Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of an output directory's shards (small outputs; large ones should iterate shards)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for p in shard_files(out_dir):
        rows.extend(pq.read_table(p, columns=columns).to_pylist())
    return rows


def chunks(items: list, size: int) -> list[list]:
    """Split items into consecutive chunks of `size` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def my_shards(n_shards: int, rank: int, world: int) -> Iterable[int]:
    """Shard indices this process handles: round-robin, so processes never overlap."""
    return range(rank, n_shards, world)


def latent_to_bytes(latent) -> tuple[bytes, list[int]]:
    """A (C, H, W) latent tensor -> (float16 bytes, shape)."""
    t = latent.detach().to("cpu").float().half().contiguous()
    return t.numpy().tobytes(), list(t.shape)


def bytes_to_latent(data: bytes, shape: list[int]):
    """Inverse of latent_to_bytes: a float32 tensor of `shape`."""
    import numpy as np
    import torch

    arr = np.frombuffer(data, dtype=np.float16).reshape(shape)
    return torch.from_numpy(arr.astype(np.float32))
