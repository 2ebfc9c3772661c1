"""The offline model zoo: tiny random pipelines of the real architectures (tests) and the pretrained toy world
(`aif demo`), by name. Each is built on first use from a fixed seed and cached (see zoo/cache.py).

To add an offline model: write its builder (a function that saves a diffusers pipeline into a folder) and register
it here. This module is light: a builder's module is imported only when the model is first built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aifeedback.registry import Registry
from aifeedback.zoo.cache import ZOO_VERSION, cached_build, resolve_builder


@dataclass(frozen=True)
class ZooModel:
    """An offline model: `aif ... --model NAME` loads the folder its builder writes."""

    name: str
    help: str
    builder: str  # "module:function" writing the pipeline folder
    version: str = ZOO_VERSION  # bump when the builder changes what it builds, so an older cached build is not reused
    like: str | None = None  # the real model (hub id) whose defaults it shares (families.resolve.MODEL_DEFAULTS)
    toy: bool = False  # pretrained on the toy world (zoo/toy_world.py): `aif demo --model` runs the loop on it

    def build(self, out: Path) -> None:
        resolve_builder(self.builder)(out)

    def path(self) -> Path:
        """The built folder (built now if it is not cached)."""
        return cached_build(self.name, self.builder, self.version)


ZOO: Registry[ZooModel] = Registry("offline model", [
    ZooModel("tiny-sdxl", "tiny random StableDiffusionXLPipeline (2 text encoders, text_time), for tests",
             "aifeedback.zoo.tiny:build_tiny_sdxl"),
    ZooModel("tiny-sd15", "tiny random StableDiffusionPipeline, for tests", "aifeedback.zoo.tiny:build_tiny_sd15"),
    ZooModel("tiny-sdxl-turbo", "tiny-sdxl with SDXL Turbo's sampler (EulerAncestral, trailing) and defaults (1 "
             "step, no guidance), for tests", "aifeedback.zoo.tiny:build_tiny_sdxl_turbo",
             like="stabilityai/sdxl-turbo"),
    ZooModel("tiny-sdxl-refiner", "tiny random SDXL refiner (StableDiffusionXLImg2ImgPipeline: second text encoder "
             "only, aesthetic score), for tests", "aifeedback.zoo.tiny:build_tiny_sdxl_refiner"),
    ZooModel("tiny-sd3", "tiny random StableDiffusion3Pipeline (CLIP-L, CLIP-G, T5; flow matching), for tests",
             "aifeedback.zoo.tiny:build_tiny_sd3"),
    ZooModel("tiny-flux", "tiny random FluxPipeline like FLUX.1-schnell (CLIP-L pooled + T5, no guidance embedding), "
             "for tests", "aifeedback.zoo.tiny_flux:build_tiny_flux"),
    ZooModel("tiny-flux-dev", "tiny random FluxPipeline like FLUX.1-dev (guidance embedding, dynamic shift), for tests",
             "aifeedback.zoo.tiny_flux:build_tiny_flux_dev"),
    ZooModel("tiny-z-image", "tiny random ZImagePipeline (Qwen3 text encoder, single-stream transformer; flow "
             "matching), for tests", "aifeedback.zoo.tiny_z_image:build_tiny_z_image"),
    ZooModel("tiny-qwen-image", "tiny random QwenImagePipeline (Qwen2.5-VL text encoder, dual-stream transformer, "
             "video-style VAE; flow matching), for tests", "aifeedback.zoo.tiny_qwen_image:build_tiny_qwen_image"),
    ZooModel("tiny-flux2", "tiny random Flux2Pipeline like FLUX.2 [dev] (Mistral3 text encoder, guidance embedding; "
             "flow matching), for tests", "aifeedback.zoo.tiny_flux2:build_tiny_flux2"),
    ZooModel("tiny-flux2-klein", "tiny random Flux2KleinPipeline like FLUX.2 [klein] base (Qwen3 text encoder, "
             "classifier-free guidance), for tests", "aifeedback.zoo.tiny_flux2:build_tiny_flux2_klein"),
    # toy-sd15 version 2: centred discs, 24 captions held out of pretraining (prompt fidelity)
    ZooModel("toy-sd15", "toy StableDiffusionPipeline pretrained on coloured discs (8x8 px) for `aif demo`",
             "aifeedback.zoo.toy:build_toy_sd15", version="2", toy=True),
    ZooModel("toy-sd3", "toy StableDiffusion3Pipeline (flow-matching MMDiT) pretrained on coloured discs (8x8 px) for "
             "`aif demo --model toy-sd3`", "aifeedback.zoo.toy_sd3:build_toy_sd3", toy=True),
])


def toy_models() -> tuple[str, ...]:
    """The offline models pretrained on the toy world, in registry order (the first is the demo's default)."""
    return tuple(name for name, model in ZOO.items() if model.toy)


def tiny_pipeline_path(name: str) -> Path:
    """Folder of an offline model, built on first use."""
    return ZOO[name].path()
