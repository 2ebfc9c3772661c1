"""Small synthetic preference datasets in the Pick-a-Pic layout (and the `aif score` layout with latents)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

WORDS = ["red", "blue", "cat", "dog", "tree", "house", "sky", "car", "apple", "boat"]


def image_bytes(rgb: tuple[int, int, int], size: tuple[int, int], seed: int, fmt: str = "JPEG") -> bytes:
    """A noisy solid-colour image, encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb, dtype=np.float32) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def pickapic_rows(n: int, seed: int = 0, size: tuple[int, int] = (24, 20)) -> list[dict]:
    """n labelled pairs: the red image always wins over the blue one (on a random side)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        red, blue = image_bytes((200, 40, 40), size, 2 * i), image_bytes((40, 40, 200), size, 2 * i + 1)
        red_first = bool(rng.integers(2))
        caption = " ".join(rng.choice(WORDS, 3))
        rows.append({
            "caption": caption, "jpg_0": red if red_first else blue, "jpg_1": blue if red_first else red,
            "label_0": 1.0 if red_first else 0.0, "label_1": 0.0 if red_first else 1.0, "ranking_id": i,
        })
    return rows


def write_pickapic(folder: Path, rows: list[dict], split: str = "train") -> Path:
    """A local Pick-a-Pic-layout Parquet folder (data/{split}-00000-of-00001.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def write_score_dir(folder: Path, rows: list[dict], latent_shape: list[int] | None = None) -> Path:
    """A minimal `aif score` output: manifest.json (stage score) + data/train-00000.parquet, optional latents."""
    import torch

    from aifeedback.storage.shards import latent_to_bytes, write_shard

    out = []
    for i, r in enumerate(rows):
        r = dict(r, prompt_id=f"p{i}", score_0=float(r["label_0"]), score_1=float(r["label_1"]), margin=1.0,
                 scorer="redness", seed_0=0, seed_1=1)
        if latent_shape is not None:  # an easy preference to learn: quiet winner latents, loud loser latents
            g = torch.Generator().manual_seed(i)
            for k in (0, 1):
                scale = 0.1 if r[f"label_{k}"] == 1.0 else 2.0
                r[f"latent_{k}"], shape = latent_to_bytes(torch.randn(latent_shape, generator=g) * scale)
            r["latent_shape"] = shape
        out.append(r)
    write_shard(folder, 0, out)
    (folder / "manifest.json").write_text(json.dumps({"stage": "score", "fingerprint": "test", "complete": True}))
    return folder


def tiny_train(dataset: Path, out: Path, **overrides):
    """A TrainConfig for a seconds-long CPU run on a tiny model at 16 px."""
    from aifeedback.config import build_config
    from aifeedback.stages.train import TrainConfig

    values = dict(dataset=str(dataset), model="tiny-sd15", out=str(out), resolution=16, max_steps=2, batch_size=2,
                  lr=1e-4, scale_lr=False, checkpoint_every=2, validation_every=0, num_workers=0, trackers="none")
    values.update(overrides)
    return build_config(TrainConfig, values)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
