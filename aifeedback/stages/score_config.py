"""`aif score`'s settings: `ScoreConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/score.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option
from aifeedback.data.labels import COLUMNS_HELP, RANKED_HELP, RANKED_PAIRINGS
from aifeedback.data.mapping import columns_problems
from aifeedback.stages.reward_options import RewardServerOptions


@dataclass
class ScoreConfig(RewardServerOptions):
    """Settings of `aif score` (--reward-url and its settings: RewardServerOptions)."""

    input: str = option("", "an `aif generate` output dir, a Pick-a-Pic-layout Parquet dir/file, or a hub dataset id",
                        path=True)
    out: str = option("", "output directory (Pick-a-Pic-layout Parquet shards + manifest.json + summary.json)",
                      identity=False)
    scorer: list[str] = option(["pickscore"], "scorer spec(s) NAME or NAME:MODEL (see `aif models`); several = an "
                                              "ensemble")
    weights: list[float] = option([], "ensemble weights, one per scorer (default: equal weights)")
    normalize: Literal["zscore", "rank", "none"] = option("zscore", "per-prompt normalisation of each scorer before "
                                                                    "weighting (ensembles only)")
    pairing: Literal["best-worst", "all", "adjacent", "random"] = option("best-worst", "which images of a prompt "
                                                                                       "become pairs (generate input "
                                                                                       "only)")
    min_margin: float = option(0.0, "pairs whose score difference is below this are ties: dropped, or 0.5/0.5 with "
                                    "--keep-ties", min=0.0)
    keep_ties: bool = option(False, "keep ties (and near-ties below --min-margin) labelled 0.5/0.5 instead of "
                             "dropping them; aif train drops them, but diffusers' train_diffusion_dpo.py reads any "
                             "label_0 != 0 as 'jpg_0 wins', so it trains on kept ties as jpg_0 wins")
    unpaired: bool = option(False, "also write one row per scored image (caption, jpg, score, desirable) to "
                                   "OUT/unpaired/images-*.parquet, the input of `aif train --loss kto --dataset "
                                   "OUT/unpaired`")
    desirable_top: float = option(0.5, "--unpaired: the top-scoring share of images labelled desirable, per prompt or "
                                       "over all images (--desirable-scope); ties with the cut are all desirable",
                                  min=0.0, max=1.0)
    desirable_scope: Literal["prompt", "global"] = option("prompt", "--unpaired: --desirable-top counts within each "
                                                                    "prompt's images, or over all images")
    desirable_threshold: Optional[float] = option(None, "--unpaired: label by score instead: desirable when the "
                                                        "(ensemble) score >= this; replaces --desirable-top")
    seed: int = option(0, "seed of --pairing random")
    split: Optional[str] = option(None, "split of a hub / local Pick-a-Pic dataset (e.g. validation)")
    columns: list[str] = option([], COLUMNS_HELP + " (pairs input; no label needed)")
    ranked_pairs: Literal[RANKED_PAIRINGS] = option("all", RANKED_HELP)
    limit: Optional[int] = option(None, "only the first N prompts (generate input) or pairs (Pick-a-Pic input)", min=1)
    shard_size: int = option(64, "prompts (or pairs) per output shard; a shard is the unit of resume", min=1)
    batch_size: int = option(64, "images per scorer forward pass", min=1, identity=False)
    workers: int = option(4, "DataLoader processes decoding and preprocessing images (0 = in the main "
                             "process)", min=0, identity=False)
    device: Optional[str] = option(None, "device (default: this process's accelerator from accelerate, else "
                                         "cpu)", identity=False)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "scorer dtype; auto = bfloat16 on CUDA, "
                                                                              "float32 on CPU")
    preview: int = option(8, "preview.html shows this many sampled pairs and this many closest calls, winner | "
                          "loser | margin (0: no preview)", min=0, identity=False)
    overwrite: bool = option(False, "replace a different job's results in --out", identity=False)
    progress: bool = option(True, "show a progress bar (in a log: a plain line every 30 s)", identity=False)
    push_to_hub: Optional[str] = option(None, "when complete, upload --out to this hub dataset repo (user/name; token "
                                              "from `hf auth login`)", identity=False)
    hub_public: bool = option(False, "make the --push-to-hub repo public (default: private)", identity=False)

    def validate(self) -> list[str]:
        from aifeedback.scoring.scorers import is_pairwise

        problems = []
        if not self.input:
            problems.append("input: required (an `aif generate` output dir, Pick-a-Pic Parquet dir, or hub id)")
        if not self.out:
            problems.append("out: required (the output directory)")
        if not self.scorer:
            problems.append("scorer: give at least one scorer, e.g. pickscore")
        if len(set(self.scorer)) != len(self.scorer):
            problems.append(f"scorer: each scorer once please, got {','.join(self.scorer)}")
        if self.weights and len(self.weights) != len(self.scorer):
            problems.append(f"weights: {len(self.weights)} weight(s) for {len(self.scorer)} scorer(s); give one per "
                            "scorer")
        if len(self.scorer) > 1 and any(is_pairwise(s) for s in self.scorer):
            problems.append(f"scorer: {','.join(s for s in self.scorer if is_pairwise(s))} judges pairs itself (it "
                            "labels each pair with its own verdict) and joins no ensemble; give it alone")
        if self.weights and sum(abs(w) for w in self.weights) == 0:
            problems.append("weights: all zero")
        if self.desirable_top == 0:
            problems.append("desirable_top: 0 would label no image desirable; give a share in (0, 1], e.g. 0.5")
        problems += columns_problems(self.columns) + self.reward_problems(self.scorer, "--scorer")
        if self.push_to_hub is not None:
            from aifeedback.sharing.hub import repo_id_problem

            problems += filter(None, [repo_id_problem(self.push_to_hub)])
        return problems

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the scorer names (and local weight paths), the input, the hub login."""
        from aifeedback.preflight import check_apart, check_dataset, check_device, check_scorers

        check_scorers(self.served(self.scorer, "--scorer"))
        check_dataset(self.input, "--input")
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
        check_device(self.device)
        if self.push_to_hub is not None:  # the login and the network, before any scoring
            from aifeedback.sharing.hub import check_hub_access

            check_hub_access(self.push_to_hub)
