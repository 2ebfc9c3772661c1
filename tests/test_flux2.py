"""The flux2 family on tiny-flux2 (FLUX.2 [dev] layout) and tiny-flux2-klein (FLUX.2 [klein] base layout): the zoo
models and the real sizes, conditioning and the denoiser call as diffusers' Flux2Pipeline / Flux2KleinPipeline compute
them, the training step as diffusers' train_dreambooth_lora_flux2.py / _flux2_klein.py take it, and the stages: the
first LoRA DPO loss ln 2, a LoRA file the stock pipelines load (slow: every stage)."""

import hashlib

import pytest
import torch

PROMPTS = ("a red cube on a table", "a blue bird in the sky")
TINY = ("tiny-flux2", "tiny-flux2-klein")


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", TINY)
def test_tiny_flux2_is_deterministic_with_the_real_classes(name, tmp_path, aif_cache):
    from diffusers import (
        AutoencoderKLFlux2,
        DiffusionPipeline,
        Flux2KleinPipeline,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from transformers import PixtralProcessor, Qwen2Tokenizer, Qwen3ForCausalLM
    from transformers.models.mistral3 import Mistral3ForConditionalGeneration

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO[name].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert isinstance(pipe.transformer, Flux2Transformer2DModel) and isinstance(pipe.vae, AutoencoderKLFlux2)
    assert not torch.equal(pipe.vae.bn.running_var, torch.ones_like(pipe.vae.bn.running_var))  # seeded statistics
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels  # 2x2-patchified latents
    assert pipe.transformer.config.joint_attention_dim == 3 * pipe.text_encoder.config.get_text_config().hidden_size
    if name == "tiny-flux2":
        assert type(pipe) is Flux2Pipeline and pipe.transformer.config.guidance_embeds
        assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration)
        assert isinstance(pipe.tokenizer, PixtralProcessor)
        chat = pipe.tokenizer.apply_chat_template(
            [[{"role": "system", "content": [{"type": "text", "text": "S"}]},
              {"role": "user", "content": [{"type": "text", "text": "a cat"}]}]], tokenize=False)
        assert chat == ["<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]a cat[/INST]"]  # Mistral Small 3's layout
    else:
        assert type(pipe) is Flux2KleinPipeline and not pipe.transformer.config.guidance_embeds
        assert isinstance(pipe.text_encoder, Qwen3ForCausalLM) and isinstance(pipe.tokenizer, Qwen2Tokenizer)
        assert pipe.config.is_distilled is False  # the base model: classifier-free guidance


def test_real_size_flux2_transformers_hold_the_released_parameter_counts():
    """The transformer configs of diffusers' scripts/convert_flux2_to_diffusers.py build, on the meta device, the
    sizes Black Forest Labs announces: FLUX.2 [dev] "32B" (32.22 B), [klein] "4B" (3.88 B) and "9B" (9.08 B; the
    klein names count the transformer only, their Qwen3 text encoders are counted by Qwen). The exact totals are pinned
    as computed here: no safetensors total of the hub repos could be read to compare them with."""
    from diffusers import Flux2Transformer2DModel

    from aifeedback.zoo.tiny_flux2 import REAL_TRANSFORMERS

    counts = {}
    for variant, config in REAL_TRANSFORMERS.items():
        with torch.device("meta"):
            counts[variant] = sum(p.numel() for p in Flux2Transformer2DModel(**config).parameters())
    assert counts == {"dev": 32_223_281_152, "klein-4b": 3_875_544_576, "klein-9b": 9_078_581_248}
    assert [round(c / 1e9) for c in counts.values()] == [32, 4, 9]
