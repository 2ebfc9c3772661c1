"""The Qwen-Image family on tiny-qwen-image: the zoo model and the real sizes, conditioning and the denoiser call as
diffusers' QwenImagePipeline computes them, the training step as diffusers' train_dreambooth_lora_qwen_image.py takes
it, and the stages: the first LoRA DPO loss ln 2, a LoRA file stock QwenImagePipeline loads (slow: every stage)."""

import torch

from tests.test_z_image import _weights_hash

PROMPTS = ("a red cube on a table", "a blue bird in the sky")


def test_tiny_qwen_image_is_deterministic_with_the_real_classes(tmp_path):
    from diffusers import AutoencoderKLQwenImage, DiffusionPipeline, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO["tiny-qwen-image"].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert isinstance(pipe, QwenImagePipeline) and isinstance(pipe.transformer, QwenImageTransformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(pipe.tokenizer, Qwen2Tokenizer) and isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    assert pipe.vae.config.z_dim * 4 == pipe.transformer.config.in_channels  # 2x2 packed latents
    assert pipe.vae_scale_factor == 2 and pipe.scheduler.config.use_dynamic_shifting


def test_real_size_qwen_image_holds_the_released_parameter_counts():
    """The published configs (zoo/tiny_qwen_image.py) build, on the meta device, the released sizes: the transformer
    20,430,401,088 parameters (Qwen-Image's "20B MMDiT"; third-party hardware guides give "20.4B") and its text
    encoder Qwen/Qwen2.5-VL-7B-Instruct 8,292,166,656 (the hub's "8.29B params": the whole
    Qwen2_5_VLForConditionalGeneration, vision tower of 676,550,144 and untied LM head included, as the pipeline
    loads it). The VAE (AutoencoderKLQwenImage's defaults, Wan 2.1's layout) is counted as built: 126,892,531."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from aifeedback.zoo.tiny_qwen_image import REAL_TEXT_ENCODER, REAL_TRANSFORMER, REAL_VAE

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**REAL_TRANSFORMER)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**REAL_TEXT_ENCODER))
        vae = AutoencoderKLQwenImage(**REAL_VAE)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(transformer) == 20_430_401_088 and round(count(transformer) / 1e9, 1) == 20.4
    assert count(text_encoder) == 8_292_166_656 and round(count(text_encoder) / 1e9, 2) == 8.29
    assert count(text_encoder.model.visual) == 676_550_144
    assert count(vae) == 126_892_531
