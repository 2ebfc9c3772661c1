"""Weights trained for one model are refused on another: every command that combines a base model with trained
weights (eval/sample/generate --tuned, export --pipeline --model, train --resume) names both, before loading."""

import pytest
import torch

from aifeedback.config import build_config
from aifeedback.families.resolve import TunedLoadError
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    """A one-step LoRA run on tiny-sdxl (module names and shapes as tiny-sd15's: only the record tells them apart)."""
    from aifeedback.stages.train import run

    root = tmp_path_factory.mktemp("sdxl_run")
    data = write_pickapic(root / "data", pickapic_rows(2))
    return run(tiny_train(data, root / "run", model="tiny-sdxl", lora_rank=2, max_steps=1, checkpoint_every=1))


def _refused(excinfo, trained="tiny-sdxl", base="tiny-sd15"):
    text = str(excinfo.value)
    assert f"trained for model {trained}, not for base model {base}" in text and "StableDiffusionXLPipeline" in text


def test_a_run_of_another_model_is_refused_by_tuned_loading(sdxl_run):
    from aifeedback.families.loading import load_pipeline

    ckpt = sdxl_run / "checkpoints" / "checkpoint-000001"
    for tuned in (sdxl_run, ckpt, ckpt / "pytorch_lora_weights.safetensors"):
        with pytest.raises(TunedLoadError) as e:
            load_pipeline("tiny-sd15", tuned=str(tuned))
        _refused(e)
    load_pipeline("tiny-sdxl", tuned=str(sdxl_run))  # the model it was trained on


@pytest.mark.parametrize("stage", ["eval", "sample", "generate"])
def test_tuned_commands_refuse_a_run_of_another_model_in_preflight(sdxl_run, tmp_path, stage):
    from aifeedback.stages import STAGES

    base = {"eval": {"base": "tiny-sd15"}}.get(stage, {"model": "tiny-sd15"})
    cfg = build_config(STAGES[stage].config, {**base, "tuned": str(sdxl_run), "out": str(tmp_path / "o"),
                                              "prompts": "parti"})
    with pytest.raises(TunedLoadError) as e:
        cfg.preflight()
    _refused(e)


def test_export_pipeline_refuses_another_base_model(sdxl_run, tmp_path):
    from aifeedback.errors import AifError
    from aifeedback.stages import STAGES
    from aifeedback.stages.export_config import ExportConfig

    cfg = build_config(ExportConfig, {"checkpoint": str(sdxl_run), "out": str(tmp_path / "x"), "pipeline": True,
                                      "model": "tiny-sd15"})
    with pytest.raises(AifError) as e:
        STAGES["export"].run(cfg)
    _refused(e)
    assert not (tmp_path / "x").exists()


def test_train_resume_refuses_a_checkpoint_of_another_model(sdxl_run, tmp_path):
    from aifeedback.errors import AifError
    from aifeedback.stages import STAGES

    ckpt = sdxl_run / "checkpoints" / "checkpoint-000001"
    cfg = tiny_train(sdxl_run.parent / "data", tmp_path / "r", lora_rank=2, max_steps=2, resume=str(ckpt))
    with pytest.raises(AifError) as e:
        STAGES["train"].run(cfg)
    _refused(e)


def test_a_lora_that_matches_no_module_is_an_error(tiny_sd15, tmp_path):
    """An SD3 LoRA (transformer keys) on SD1.5: diffusers skips every key and the model stays the base."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline

    pipe = load_pipeline("tiny-sd3")
    fam = detect(pipe)
    torch.manual_seed(0)
    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=list(fam.lora_targets)))
    fam.lora_pipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    with pytest.raises(TunedLoadError, match="none of its layers .*transformer.* match a module of its unet"):
        load_pipeline("tiny-sd15", tuned=str(tmp_path))
