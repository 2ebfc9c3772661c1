"""`aif cache`: encode a pair dataset once into a model family's latent space and prompt conditioning, so `aif train
--dataset CACHE` runs no VAE encoder and no text encoder in its step (the format: aifeedback.data.cache).

The usable pairs (ties dropped, as training drops them) are cut into shards of --shard-size pairs in dataset order;
shard i always holds the same pairs, so processes take shards round-robin (`accelerate launch`) and a rerun after a
crash skips the shards already written. A pair whose image cannot be read is left out, counted and reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.utils import gather_object
from safetensors.torch import save

from aifeedback.config import identity_dict, save_config, to_dict
from aifeedback.console import finish, note, progress, quiet_libraries
from aifeedback.data import pairs as D
from aifeedback.data.cache import (
    EMPTY_PROMPT,
    IMAGE,
    PROMPT,
    STAGE,
    cache_key,
    posterior,
    spec,
    tensor_bytes,
)
from aifeedback.data.images import decode_image
from aifeedback.data.transforms import upright
from aifeedback.dist import process_state
from aifeedback.families import detect
from aifeedback.families.loading import load_pipeline
from aifeedback.stages.cache_config import CacheConfig
from aifeedback.stages.generate import resolve_device
from aifeedback.storage.files import atomic_write_bytes
from aifeedback.storage.manifest import completed_output, fingerprint, finish_output, prepare_output
from aifeedback.storage.publish import remove_stale
from aifeedback.storage.shards import SHARD_DIR, chunks, my_shards, shard_done, shard_files, write_shard

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Encoder:
    """The frozen VAE and text encoders of the model, and how one batch of pairs becomes cache rows."""

    def __init__(self, cfg: CacheConfig, device: str):
        pipe = load_pipeline(cfg.model, "float32", "cpu", vae=cfg.vae)
        self.family = detect(pipe)
        dtype = DTYPES[cfg.mixed_precision]
        self.text = self.family.text_encoders(pipe).to(device, dtype)  # as training's frozen parts
        vae_dtype = self.family.vae_dtype(dtype, custom_vae=bool(cfg.vae))
        self.vae = pipe.vae.to(device, vae_dtype).requires_grad_(False).eval()
        self.resolution = cfg.resolution or self.family.resolution
        self.orientations = (0, 1) if cfg.flip else (0,)
        self.transform = D.Transform(self.resolution)  # centre crop; flipped on demand

    @torch.no_grad()
    def specs(self) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
        """The shape and dtype of every stored column (from the empty caption and a blank image), and the empty
        caption's conditioning (what --caption-dropout trains on)."""
        empty = {k: v.contiguous() for k, v in self.family.encode_prompts(self.text, [""]).items()}
        blank = posterior(self.vae, torch.zeros(1, 3, self.resolution, self.resolution))[0]
        specs = {f"{IMAGE}_{o}_{i}": spec(blank) for o in self.orientations for i in (0, 1)}
        specs.update({f"{PROMPT}{k}": spec(v[0]) for k, v in empty.items()})
        return specs, {k: v[0].cpu().contiguous() for k, v in empty.items()}

    def schema(self, specs: dict[str, dict[str, Any]]) -> Any:
        cols = [("row", pa.int64()), ("caption", pa.string()), ("label_0", pa.float64()), ("label_1", pa.float64())]
        cols += [(f"time_ids_{o}_{i}", pa.list_(pa.int64())) for o in self.orientations for i in (0, 1)]
        return pa.schema(cols + [(c, pa.binary()) for c in specs])

    def crops(self, row: dict[str, Any]) -> list[tuple[torch.Tensor, list[int]]]:
        """(pixels, time_ids) of each stored crop of a pair, orientation-major; raises D.CORRUPT on a bad image."""
        if not isinstance(row["caption"], str):
            raise ValueError(f"caption is {type(row['caption']).__name__}, not text")
        images = [upright(decode_image(row[f"jpg_{i}"], rgb=False)) for i in (0, 1)]
        return [self.transform.image(img, 0.0, 0.0, bool(o)) for o in self.orientations for img in images]

    @torch.no_grad()
    def rows(self, batch: list[tuple[int, int, str, list]]) -> list[dict[str, Any]]:
        """Cache rows of (source row, winner, caption, crops) of pairs whose images decoded."""
        per = len(batch[0][3])  # stored crops per pair
        moments = posterior(self.vae, torch.stack([p for *_, crops in batch for p, _ in crops]))
        prompts = self.family.encode_prompts(self.text, [caption for _, _, caption, _ in batch])
        out = []
        for j, (src, winner, caption, crops) in enumerate(batch):
            row = {"row": src, "caption": caption, "label_0": float(winner == 0), "label_1": float(winner == 1)}
            for k, (o, i) in enumerate((o, i) for o in self.orientations for i in (0, 1)):
                row[f"{IMAGE}_{o}_{i}"] = tensor_bytes(moments[j * per + k])
                row[f"time_ids_{o}_{i}"] = crops[k][1]
            row.update({f"{PROMPT}{key}": tensor_bytes(v[j]) for key, v in prompts.items()})
            out.append(row)
        return out


def run(cfg: CacheConfig) -> Path:
    """Encode cfg.dataset's usable pairs into cfg.out; returns the output folder."""
    cfg.preflight()  # cheap and idempotent: STAGES[name].run checks before the import, direct callers here
    quiet_libraries()
    state, out = process_state(), Path(cfg.out)
    table = D.open_table(cfg.data, cfg.dataset, cfg.split, columns=cfg.columns, pairing=cfg.ranked_pairs)
    pairs, stats = D.filter_labels(table, cfg.max_pairs)
    if not pairs:
        raise D.no_pairs_error(cfg.dataset, stats)
    inputs = {"pairs": fingerprint(pairs), "source": source_fingerprint(table)}
    if completed_output(out, STAGE, identity_dict(cfg), inputs):  # a finished rerun: no model to load
        if state.is_main_process:
            print(f"already complete: {out} ({len(pairs)} pairs)")
        return out
    args = (out, STAGE, to_dict(cfg), identity_dict(cfg), cfg.overwrite, inputs)
    if state.is_main_process:  # refuse a conflicting --out now, before the model load (this writes nothing)
        prepare_output(*args, is_main=False)
    device = resolve_device(cfg.device)
    if cfg.device == "auto" and state.num_processes > 1:
        device = str(state.device)
    enc = Encoder(cfg, device)
    specs, empty = enc.specs()
    manifest = None
    if state.is_main_process:
        manifest = prepare_output(*args, is_main=True)
        remove_stale(out / SHARD_DIR)  # temporaries a killed run left; never a complete shard
        save_config(cfg, out / "config.yaml")
        note(stats.summary(cfg.dataset))
    state.wait_for_everyone()
    failed = encode_shards(cfg, enc, table, chunks(pairs, cfg.shard_size), enc.schema(specs), out, state)
    failed = sum(gather_object([failed]))  # every process's unreadable pairs
    state.wait_for_everyone()
    if state.is_main_process:
        atomic_write_bytes(out / EMPTY_PROMPT, save(empty))
        key = cache_key(cfg, enc.family.name, enc.resolution, cfg.mixed_precision)
        n = sum(pq.read_metadata(f).num_rows for f in shard_files(out))
        finish_output(out, dict(manifest, key=key, tensors=specs), pairs=n, rows=stats.rows,
                      ties_dropped=stats.ties, images_failed=failed, processes=state.num_processes)
        finish(STAGE, out, f"{n} pairs encoded for {enc.family.name} at {enc.resolution}px"
               f"{' (+ mirrored)' if cfg.flip else ''}", f"aif train --dataset {out} --model {cfg.model} "
               f"--resolution {enc.resolution}{'' if cfg.flip else ' --no-flip'}"
               f"{'' if cfg.mixed_precision == 'no' else ' --mixed-precision ' + cfg.mixed_precision}")
    state.wait_for_everyone()  # a stage run next in these processes must see the finished manifest
    return out


def encode_shards(cfg: CacheConfig, enc: Encoder, table: Any, shards: list[list], schema: Any, out: Path,
                  state: Any) -> int:
    """Encode and write this process's shards not on disk yet; returns how many pairs had unreadable images."""
    todo = [i for i in my_shards(len(shards), state.process_index, state.num_processes) if not shard_done(out, i)]
    bar = progress(total=sum(len(shards[i]) for i in todo), unit="pair", desc="cache",
                   enabled=cfg.progress and state.is_local_main_process)
    failed = 0
    for i in todo:
        rows = []
        for batch in chunks(shards[i], cfg.batch_size):
            ready = []
            for src, winner in batch:
                row = table[src]
                try:
                    ready.append((src, winner, row["caption"], enc.crops(row)))
                except D.CORRUPT as e:  # reported and left out of the cache, like training skips it
                    failed += 1
                    note(f"warning: pair at row {src} of {cfg.dataset} left out: {D.corrupt_reason(e)}")
            rows += enc.rows(ready) if ready else []
            bar.update(len(batch))
        write_shard(out, i, rows, schema)
    bar.close()
    return failed


def source_fingerprint(table: Any) -> str:
    """What identifies the source's content cheaply: its files' names, sizes and times, or the dataset's hash."""
    files = getattr(table, "files", None)
    if files:
        return fingerprint([(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files])
    return str(getattr(table, "_fingerprint", ""))
