"""The stages, by command name: the one list from which the command line, recipe sections and the demo derive.

A stage is a config dataclass (`stages/<module>_config.py`, light: the command line reads it to build `--help`)
and a module with `run(cfg)` (`stages/<module>.py`, imported only when the stage runs). `STAGES[name].run(cfg)` is
the checked entry point: the config's `preflight()` (misspelt models, missing files) runs before the stage's heavy
imports. To add a stage, write the two files and register it here.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from aifeedback.collection import uncollected
from aifeedback.console import running_nested
from aifeedback.preflight import check_output
from aifeedback.registry import Registry
from aifeedback.stages.cache_config import CacheConfig
from aifeedback.stages.demo_config import DemoConfig
from aifeedback.stages.evaluate_config import EvalConfig
from aifeedback.stages.export_config import ExportConfig
from aifeedback.stages.generate_config import GenerateConfig
from aifeedback.stages.inspect_config import InspectConfig
from aifeedback.stages.loop_config import LoopConfig
from aifeedback.stages.rl_config import RLConfig
from aifeedback.stages.sample_config import SampleConfig
from aifeedback.stages.score_config import ScoreConfig
from aifeedback.stages.train_config import TrainConfig
from aifeedback.storage.lock import output_lock


@dataclass(frozen=True)
class Stage:
    """A command: `aif NAME` builds `config` from flags and a recipe's NAME section, then calls run(cfg)."""

    name: str
    help: str
    config: type
    module: str  # defines run(cfg); imported when the stage runs

    def run(self, cfg: Any) -> Any:
        """Check cfg's names and paths (cfg.preflight(), light), then import the stage and run it, holding the lock on
        its output folder throughout (a second run into the same folder is refused before it writes anything)."""
        check_output(cfg.out)  # every stage writes a folder: a file or a read-only disk there fails first
        cfg.preflight()  # writes nothing: a typo leaves no folder behind
        with output_lock(cfg.out):
            # torch, diffusers, ...: no collections while they import (aifeedback/collection.py); a stage inside
            # another (aif loop's rounds) freezes nothing of the outer one's
            first = self.module not in sys.modules and not running_nested()
            with uncollected() if first else nullcontext():
                module = importlib.import_module(self.module)
            return module.run(cfg)


STAGES: Registry[Stage] = Registry("stage", [
    Stage("generate", "Sample K candidate images per prompt from any supported model (`aif models`).", GenerateConfig,
          "aifeedback.stages.generate"),
    Stage("inspect", "What a preference dataset holds: source, counts, label balance, example pairs (no model).",
          InspectConfig, "aifeedback.stages.inspect"),
    Stage("score", "Score images with reward models and write preference pairs.", ScoreConfig,
          "aifeedback.stages.score"),
    Stage("cache", "Encode pairs once into a model's latents and prompt embeddings for faster training.", CacheConfig,
          "aifeedback.stages.cache"),
    Stage("train", "Preference fine-tuning (Diffusion-DPO, KTO, MaPO, ...) on human or AI-labelled data.",
          TrainConfig, "aifeedback.stages.train"),
    Stage("rl", "Online RL (GRPO, DiffusionNFT, AWM) of a denoiser on any reward: sample groups per prompt, score, "
          "update.", RLConfig, "aifeedback.stages.rl"),
    Stage("export", "Turn a training checkpoint into a diffusers denoiser or LoRA file.", ExportConfig,
          "aifeedback.stages.export"),
    Stage("sample", "Generate images from a trained model (base + denoiser/LoRA).", SampleConfig,
          "aifeedback.stages.sample"),
    Stage("eval", "Win rates of a tuned model against its base, with a report.", EvalConfig,
          "aifeedback.stages.evaluate"),
    Stage("loop", "Online AI feedback: rounds of generate, score, train, eval on the current model's samples.",
          LoopConfig, "aifeedback.stages.loop"),
    Stage("demo", "The whole loop on the toy model, offline, in minutes on a CPU.", DemoConfig,
          "aifeedback.stages.demo"),
])
