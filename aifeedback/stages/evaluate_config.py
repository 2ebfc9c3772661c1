"""`aif eval`'s settings: `EvalConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/evaluate.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.data.labels import COLUMNS_HELP, RANKED_HELP, RANKED_PAIRINGS
from aifeedback.data.mapping import columns_problems
from aifeedback.families.quantize import QUANTIZATION_CHOICES, SAMPLING_QUANTIZATION_HELP
from aifeedback.families.resolve import DTYPES, SCHEDULERS
from aifeedback.stages.reward_options import RewardServerOptions


@dataclass
class EvalConfig(RewardServerOptions):
    base: str = option("", "base model: tiny name, hub id (stabilityai/stable-diffusion-xl-base-1.0) or local folder",
                       path=True)
    tuned: str = option("", "tuned model: anything --base takes (a whole model), or weights for the base: denoiser "
                        "folder, LoRA .safetensors, training checkpoint, run dir (latest checkpoint), hub repo with "
                        "only unet/ or transformer/",
                        path=True)
    out: str = option("outputs/eval", "output directory (base/ and tuned/ images, report.json/.md/.html, grids/)",
                      identity=False)
    prompts: str = option("parti", "prompt source: parti, geneval, a .txt/.jsonl/.csv/.tsv file, or a datasets dataset",
                          path=True)
    prompt_column: Optional[str] = option(None, "column holding the prompt text (files and datasets)")
    split: Optional[str] = option(None, "dataset split to read, for --prompts or --scorer-accuracy (there default: "
                                        "validation)")
    limit: Optional[int] = option(None, "use only the first N prompts (or N pairs with --scorer-accuracy)", min=1)
    seeds_per_prompt: int = option(1, "images per prompt and model; twins share a seed", min=1)
    seed: int = option(0, "base seed; each image's seed derives from it, the prompt and k")
    scorers: list[str] = option(["pickscore", "hpsv2", "clip", "aesthetic"],
                                "scorers, NAME or NAME:MODEL (see `aif models`); the first ranks best/worst examples",
                                identity=False)
    steps: Optional[int] = option(None, "denoising steps (default: aif generate's)", min=1)
    guidance: Optional[float] = option(None, "classifier-free guidance scale (default: aif generate's)", min=0)
    resolution: Optional[int] = option(None, "image side in pixels (default: the model's)", min=8)
    negative_prompt: Optional[str] = option(None, "negative prompt for both models")
    scheduler: Optional[str] = option(None, "sampler (default: the model's own)", choices=SCHEDULERS)
    dtype: Optional[str] = option(None, "generation dtype (default: float16 on GPU, float32 on "
                                        "CPU)", choices=("auto",) + DTYPES)
    vae: Optional[str] = option(None, "VAE override for both models, e.g. madebyollin/sdxl-vae-fp16-fix", path=True)
    base_quantization: Literal[QUANTIZATION_CHOICES] = option("none", SAMPLING_QUANTIZATION_HELP + "; both models")
    batch_size: Optional[int] = option(None, "images per generation batch (default: aif "
                                             "generate's)", min=1, identity=False)
    device: str = option("auto", "device: auto (the process's GPU under accelerate, else CPU), cuda, cuda:N, cpu",
                         identity=False)
    scorer_batch_size: int = option(16, "image pairs per scoring batch", min=1, identity=False)
    scorer_dtype: str = option("float32", "scorer dtype", choices=("float32", "float16", "bfloat16"), identity=False)
    examples: int = option(4, "best and worst examples shown in the report", min=1, identity=False)
    sample_prompts: int = option(8, "randomly chosen prompts shown side by side in the report", min=1, identity=False)
    thumb: int = option(256, "longest side of the images in report.html and grids/, px", min=16, identity=False)
    bootstrap: int = option(10_000, "bootstrap resamples for the 95% intervals", min=100, identity=False)
    scorer_accuracy: Optional[str] = option(
        None, "instead of comparing models: accuracy of each scorer vs human labels on this set (any pair source: "
        "Pick-a-Pic Parquet, HPDv3 test.json, HPDv2, ...; local or hub id)", path=True)
    columns: list[str] = option([], COLUMNS_HELP + " (--scorer-accuracy)")
    ranked_pairs: Literal[RANKED_PAIRINGS] = option("all", RANKED_HELP + " (--scorer-accuracy)")
    benchmark: Optional[str] = option(None, "also report this benchmark's scores for both models (geneval: overall "
                                      "and six task scores with 95% intervals; needs --prompts geneval; adds the "
                                      "geneval-verdict scorer)", choices=("geneval",))
    overwrite: bool = option(False, "replace a different job's results in --out", identity=False)
    progress: bool = option(True, "show progress bars (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        problems = []
        if not self.scorers:
            problems.append("scorers: name at least one scorer (see `aif models`)")
        if not self.scorer_accuracy:
            problems += [f"{k}: required (or pass --scorer-accuracy DATASET)" for k in ("base", "tuned")
                         if not getattr(self, k)]
        problems += columns_problems(self.columns) + side_problems(self, "resolution")
        problems += self.reward_problems(self.scorers, "--scorers")
        if self.benchmark == "geneval" and (self.prompts != "geneval" or self.scorer_accuracy):
            problems.append("benchmark: geneval judges GenEval's own prompts: pass --prompts geneval (and "
                            "--seeds-per-prompt 4, as GenEval), without --scorer-accuracy")
        return problems

    def preflight(self) -> None:
        """Fail fast, before torch is imported and before any image is generated or scored: scorers, then the
        labelled set, or the models (--tuned: a whole model or weights for --base) and the prompt file."""
        from aifeedback.data.prompts import source_kind
        from aifeedback.families.resolve import check_available, check_pipeline, is_pipeline
        from aifeedback.preflight import (
            check_apart,
            check_base_quantization,
            check_dataset,
            check_device,
            check_rule_prompts,
            check_scorers,
        )

        check_scorers(self.served(self.scorers, "--scorers"), "--scorers")
        if self.scorer_accuracy:
            check_dataset(self.scorer_accuracy, "--scorer-accuracy")
        else:
            check_available(self.base, "base model")
            if is_pipeline(self.tuned):
                check_available(self.tuned, "tuned model")
            kind, _ = check_pipeline(self.base, self.vae, None if is_pipeline(self.tuned) else self.tuned)
            check_base_quantization(self.base_quantization, kind, self.tuned)
            source_kind(self.prompts)
            check_rule_prompts(self.scorers, self.prompts, self.prompt_column, self.limit)
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
        check_device(self.device)
