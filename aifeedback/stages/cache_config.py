"""`aif cache`'s settings: `CacheConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/cache.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.data.labels import COLUMNS_HELP, RANKED_HELP, RANKED_PAIRINGS
from aifeedback.data.mapping import columns_problems


@dataclass
class CacheConfig:
    # what to encode: the pairs `aif train` would read
    data: Literal["human", "ai"] = option("human", "human: Pick-a-Pic-layout pairs (hub id or local folder); ai: an "
                                                   "`aif score` output folder")
    dataset: str = option("", "the pairs to encode: local Parquet/Arrow folder, `aif score` output or hub id",
                          path=True)
    split: str = option("train", "dataset split; ignored for `aif score` outputs")
    columns: list[str] = option([], COLUMNS_HELP)
    ranked_pairs: Literal[RANKED_PAIRINGS] = option("all", RANKED_HELP)
    max_pairs: Optional[int] = option(None, "encode only the first N usable pairs (after dropping ties); null = "
                                            "all", min=1)
    # the key: training uses the cache only when all of these match its own settings
    model: str = option("stabilityai/stable-diffusion-xl-base-1.0", "the base model training will use (its VAE and "
                                                                    "text encoders encode the pairs)", path=True)
    vae: Optional[str] = option(None, "VAE override, as training's --vae", path=True)
    resolution: Optional[int] = option(None, "training resolution in pixels (centre crop); null = the model's "
                                             "native one", min=8)
    flip: bool = option(True, "also store each image's mirror, so training with --flip (random horizontal flip) "
                              "can use the cache; --no-flip halves the encoding work and the image storage")
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", "training's --mixed-precision: the encoders run "
                                                                  "and the tensors are stored in its dtype")
    # output and execution
    out: str = option("outputs/cache", "output folder (Parquet shards + manifest.json + empty_prompt.safetensors)",
                      identity=False)
    shard_size: int = option(256, "pairs per Parquet shard (the unit of resume and of work split across processes)",
                             min=1)
    batch_size: int = option(8, "pairs encoded per forward", min=1, identity=False)
    device: str = option("auto", "device: auto (the process's GPU under accelerate, else CPU), cuda, cuda:N, cpu",
                         identity=False)
    overwrite: bool = option(False, "replace a different job's results in --out instead of refusing", identity=False)
    progress: bool = option(True, "show a progress bar (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        problems = [] if self.dataset else ["dataset: pass the pairs to encode (--dataset)"]
        return problems + columns_problems(self.columns) + side_problems(self, "resolution")

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the model, VAE and dataset."""
        from aifeedback.data.pairs import check_source
        from aifeedback.families.resolve import check_available, check_vae_class
        from aifeedback.preflight import check_apart, check_device

        check_available(self.model)
        if self.vae:
            check_available(self.vae, "VAE")
            check_vae_class(self.model, self.vae)
        check_source(self.data, self.dataset)
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
        check_device(self.device)
