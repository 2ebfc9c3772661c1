"""The offline model zoo: tiny random pipelines for tests and the pretrained toy world, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aifeedback.zoo.cache import ZOO_VERSION, cached_build
from aifeedback.zoo.tiny import build_tiny_sd15, build_tiny_sdxl


def _build_toy_sd15(out: Path) -> None:
    from aifeedback.zoo.toy import build_toy_sd15  # the toy world lives in its own module (it trains, ~1.5 min)

    build_toy_sd15(out)


# name -> (builder, one-line description). Other modules (toy world, tiny scorers) add their own entries.
TINY_PIPELINES: dict[str, tuple[Callable[[Path], None], str]] = {
    "tiny-sdxl": (build_tiny_sdxl, "tiny random StableDiffusionXLPipeline (2 text encoders, text_time), for tests"),
    "tiny-sd15": (build_tiny_sd15, "tiny random StableDiffusionPipeline, for tests"),
    "toy-sd15": (_build_toy_sd15, "toy StableDiffusionPipeline pretrained on coloured discs (8x8 px) for `aif demo`"),
}


# name -> its builder's version where it is not ZOO_VERSION. Bump toy-sd15's whenever aifeedback/zoo/toy.py changes
# what it builds (world, architecture, training), so a cached toy model from before is rebuilt, not reused.
# 2: centred discs, 24 captions held out of pretraining (prompt fidelity).
BUILD_VERSIONS: dict[str, str] = {"toy-sd15": "2"}


def tiny_pipeline_path(name: str) -> Path:
    """Folder of a tiny pipeline, built on first use."""
    build, _ = TINY_PIPELINES[name]
    return cached_build(name, build, BUILD_VERSIONS.get(name, ZOO_VERSION))
