"""The SDXL variants users run: SDXL Turbo (the sdxl family with its own sampling defaults) and the SDXL refiner (the
sdxl-refiner family: second text encoder only, aesthetic-score time ids), on their tiny zoo models."""

import math
from types import SimpleNamespace

import pytest
import torch

from aifeedback.config import build_config

# Real-size UNet configs (the fields detection reads) of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0.
REAL = {
    "sdxl": dict(cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    "sdxl-refiner": dict(cross_attention_dim=1280, addition_embed_type="text_time", addition_time_embed_dim=256,
                         projection_class_embeddings_input_dim=2560),
}


@pytest.fixture(scope="module")
def refiner(aif_cache):
    from aifeedback.families.loading import load_pipeline

    return load_pipeline("tiny-sdxl-refiner")


@pytest.mark.parametrize("name", list(REAL))
def test_real_configs_are_told_apart(name):
    from aifeedback.families import detect

    assert detect(SimpleNamespace(unet=SimpleNamespace(config=REAL[name]))).name == name


def test_tiny_models_detect_and_load_with_their_pipelines(refiner):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline

    assert isinstance(refiner, StableDiffusionXLImg2ImgPipeline) and refiner.config.requires_aesthetics_score
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert detect(refiner).name == "sdxl-refiner" and detect(refiner.unet).name == "sdxl-refiner"
    turbo = load_pipeline("tiny-sdxl-turbo")
    assert detect(turbo).name == "sdxl"
    assert type(turbo.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert turbo.scheduler.config.timestep_spacing == "trailing"


@pytest.mark.numerics
def test_refiner_conditioning_is_what_its_diffusers_pipeline_builds(refiner):
    """Prompt embeddings, pooled embedding and the five time ids (size, crop, aesthetic score 6.0) equal those of
    StableDiffusionXLImg2ImgPipeline, so the UNet sees in training what it sees when the pipeline samples."""
    from aifeedback.families import detect

    fam = detect(refiner)
    captions = ["a red cube on a table", ""]
    ours = fam.encode_prompts(fam.text_encoders(refiner), captions)
    embeds, _, pooled, _ = refiner.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ours["embeds"], embeds) and torch.equal(ours["pooled"], pooled)
    ids, _ = refiner._get_add_time_ids((24, 32), (2, 3), (16, 16), 6.0, 2.5, (24, 32), (2, 3), (16, 16),
                                       dtype=torch.float32, text_encoder_projection_dim=pooled.shape[-1])
    micro = torch.tensor([[24.0, 32, 2, 3, 16, 16]] * 2)  # what the data side records: orig, crop, target
    added = fam.added_conditioning(ours, micro)["added_cond_kwargs"]
    assert torch.equal(added["time_ids"], ids.repeat(2, 1)) and torch.equal(added["text_embeds"], pooled)


def test_refiner_trains_on_the_low_noise_end():
    from diffusers import DDPMScheduler

    from aifeedback.families import get_family

    torch.manual_seed(0)
    _, t, _ = get_family("sdxl-refiner").training_noise(DDPMScheduler(), torch.randn(400, 4, 2, 2), groups=2)
    assert int(t.max()) < 200 and int(t.max()) > 150  # the refiner's 200 noise scales, drawn across that range


def test_model_defaults_by_hub_id_zoo_name_and_cache_folder(tmp_path):
    from aifeedback.families.resolve import KNOWN_MODELS, MODEL_DEFAULTS, model_defaults

    turbo = model_defaults("stabilityai/sdxl-turbo")
    assert (turbo.steps, turbo.guidance, turbo.resolution) == (1, 0.0, 512)
    assert model_defaults("tiny-sdxl-turbo") == turbo
    snapshot = tmp_path / "hub" / "models--stabilityai--sdxl-turbo" / "snapshots" / "abc123"
    assert model_defaults(str(snapshot)) == turbo
    assert model_defaults("stabilityai/stable-diffusion-xl-base-1.0").steps is None
    assert set(MODEL_DEFAULTS) <= set(KNOWN_MODELS)  # every model with defaults is listed by `aif models`


def test_turbo_defaults_drive_generate_sample_and_validation(aif_cache, tmp_path, monkeypatch):
    """No --steps/--guidance: generate and sample draw Turbo's 1 step without guidance, train's validation too;
    a flag still wins."""
    import diffusers

    from aifeedback.stages import generate, sample, train
    from aifeedback.storage.shards import read_rows
    from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic

    calls = []
    original = diffusers.StableDiffusionXLPipeline.__call__

    def recording(self, *args, **kw):
        calls.append((kw["num_inference_steps"], kw["guidance_scale"]))
        return original(self, *args, **kw)

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "__call__", recording)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\n")
    common = {"model": "tiny-sdxl-turbo", "prompts": str(prompts), "resolution": 16, "progress": False}
    generate.run(build_config(generate.GenerateConfig, {**common, "images_per_prompt": 1, "out": str(tmp_path / "g")}))
    assert [(r["steps"], r["guidance"], r["scheduler"]) for r in read_rows(tmp_path / "g")] == \
        [(1, 0.0, "EulerAncestralDiscreteScheduler")]
    sample.run(build_config(sample.SampleConfig, {**common, "grid": False, "out": str(tmp_path / "s")}))
    sample.run(build_config(sample.SampleConfig, {**common, "grid": False, "steps": 2, "guidance": 3.0,
                                                   "out": str(tmp_path / "s2")}))
    data = write_pickapic(tmp_path / "data", pickapic_rows(2))
    train.run(tiny_train(data, tmp_path / "run", model="tiny-sdxl-turbo", lora_rank=2, max_steps=1,
                         checkpoint_every=1, validation_every=1, validation_prompts=["a red cat"],
                         validation_seeds=[0]))
    assert calls == [(1, 0.0), (1, 0.0), (2, 3.0), (1, 0.0), (1, 0.0)]  # generate, sample x2, validation x2
    assert math.isclose(read_metrics(tmp_path / "run")[0]["loss"], math.log(2), abs_tol=1e-6)  # policy == ref


def test_refiner_generate_score_train_export_load(refiner, tmp_path):
    """The whole loop on tiny-sdxl-refiner: a LoRA DPO run starts at ln 2 and its export loads in stock diffusers."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from aifeedback.families.sampling import render
    from aifeedback.stages import export, generate, score, train
    from aifeedback.stages.export_config import ExportConfig
    from aifeedback.stages.score_config import ScoreConfig
    from aifeedback.zoo import tiny_pipeline_path
    from tests.pairs_fixtures import read_metrics, tiny_train

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue dog\n")
    gen, pairs, run_dir = tmp_path / "gen", tmp_path / "pairs", tmp_path / "run"
    generate.run(build_config(generate.GenerateConfig, {
        "model": "tiny-sdxl-refiner", "prompts": str(prompts), "images_per_prompt": 2, "steps": 2, "resolution": 16,
        "out": str(gen), "progress": False}))
    score.run(build_config(ScoreConfig, {"input": str(gen), "out": str(pairs), "scorer": "redness",
                                               "workers": 0, "progress": False}))
    train.run(tiny_train(pairs, run_dir, data="ai", model="tiny-sdxl-refiner", lora_rank=2, lr=1e-2,
                         validation_every=2, validation_prompts=["a red cat"], validation_seeds=[0]))
    first = read_metrics(run_dir)[0]
    # Policy = reference at step 0: the DPO loss is -log sigmoid(0) = ln 2 up to float32 rounding of the errors.
    assert math.isclose(first["loss"], math.log(2), abs_tol=1e-6)
    out = export.run(build_config(ExportConfig, {"checkpoint": str(run_dir), "out": str(tmp_path / "lora")}))
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_pipeline_path("tiny-sdxl-refiner"))
    pipe.set_progress_bar_config(disable=True)
    before = render(pipe, ["a red cat"], [0], steps=2, width=16, height=16).images[0]
    pipe.load_lora_weights(str(out))
    after = render(pipe, ["a red cat"], [0], steps=2, width=16, height=16).images[0]
    assert before.size == after.size == (16, 16) and before.tobytes() != after.tobytes()
