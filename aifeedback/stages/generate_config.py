"""`aif generate`'s settings: `GenerateConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/generate.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.families.quantize import QUANTIZATION_CHOICES, SAMPLING_QUANTIZATION_HELP
from aifeedback.families.resolve import DTYPES, SCHEDULERS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclass
class GenerateConfig:
    model: str = option("stabilityai/stable-diffusion-xl-base-1.0", "diffusers model of a supported family (`aif "
                                                                    "models`): hub id, local folder, or tiny name",
                        path=True)
    prompts: str = option("parti", "prompt source: parti, geneval, a .txt/.jsonl/.csv/.tsv file, or a local / hub "
                                   "datasets dataset", path=True)
    prompt_column: Optional[str] = option(None, "column holding the prompt (.jsonl/.csv/.tsv/datasets; default: "
                                                "prompt, caption or text)")
    split: Optional[str] = option(None, "dataset split to read (needed when a dataset has several)")
    limit: Optional[int] = option(None, "use only the first N prompts (after dropping empty and repeated ones)", min=1)
    dedupe: bool = option(True, "drop repeated prompts")
    images_per_prompt: int = option(4, "candidate images per prompt (K)", min=1)
    out: str = option("outputs/generate", "output directory (Parquet shards + manifest.json)", identity=False)
    steps: Optional[int] = option(None, "denoising steps (default: the model's: 50; 1 for SDXL Turbo)", min=1,
                                  max=1000)
    guidance: Optional[float] = option(None, "classifier-free guidance scale (default: the model's: 5.0 for SDXL, "
                                             "7.5 for SD1.5, 0 for SDXL Turbo)", min=0)
    resolution: Optional[int] = option(None, "image size in pixels (default: the model's native size, 1024 for "
                                             "SDXL)", min=8)
    width: Optional[int] = option(None, "image width, overrides --resolution", min=8)
    height: Optional[int] = option(None, "image height, overrides --resolution", min=8)
    negative_prompt: str = option("", "negative prompt used for every image")
    scheduler: str = option("default", "sampler (default keeps the model's own)", choices=SCHEDULERS)
    seed: int = option(0, "run seed; image k of a prompt uses a seed derived from (seed, prompt_id, k)", min=0)
    dtype: str = option("auto", "weights dtype (auto: float16 on GPU, float32 on CPU)", choices=("auto",) + DTYPES)
    vae: Optional[str] = option(None, "replacement VAE (e.g. madebyollin/sdxl-vae-fp16-fix for fp16 SDXL)", path=True)
    tuned: Optional[str] = option(None, "fine-tuned weights: LoRA file/folder, denoiser or pipeline folder, or "
                                        "training run dir", path=True)
    base_quantization: Literal[QUANTIZATION_CHOICES] = option("none", SAMPLING_QUANTIZATION_HELP)
    image_format: Literal["jpeg", "png"] = option("jpeg", "how images are encoded in the rows")
    jpeg_quality: int = option(95, "JPEG quality", min=1, max=100)
    save_latents: bool = option(False, "also store each final latent (the denoiser's space, float16) so training "
                                       "can skip the VAE encoder")
    shard_size: int = option(64, "images per Parquet shard (the unit of resume and of work split across "
                                 "processes)", min=1)
    batch_size: int = option(4, "images rendered per pipeline call", min=1, identity=False)
    device: str = option("auto", "device: auto (the process's GPU under accelerate, else CPU), cuda, cuda:N, "
                                 "cpu", identity=False)
    compile: bool = option(False, "torch.compile the denoiser (worth it for long GPU runs)", identity=False)
    compile_mode: str = option("max-autotune", "torch.compile mode for --compile (max-autotune tunes kernels for "
                                               "minutes; default compiles faster)",
                               choices=COMPILE_MODES, identity=False)
    overwrite: bool = option(False, "replace a different job's results in --out instead of refusing", identity=False)
    progress: bool = option(True, "show a progress bar (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        return side_problems(self, "resolution", "width", "height")

    def preflight(self) -> None:
        """Fail fast, before torch is imported, on a model, VAE, tuned weights or prompt file that cannot be found."""
        from aifeedback.data.prompts import source_kind
        from aifeedback.families.resolve import check_pipeline
        from aifeedback.preflight import check_apart, check_base_quantization, check_device

        kind, _ = check_pipeline(self.model, self.vae, self.tuned)
        check_base_quantization(self.base_quantization, kind, self.tuned)
        source_kind(self.prompts)
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
        check_device(self.device)
