"""The Z-Image family on tiny-z-image: the zoo model and the real sizes, conditioning and the denoiser call as
diffusers' ZImagePipeline computes them, the training step as diffusers' train_dreambooth_lora_z_image.py takes it,
and the stages: the first LoRA DPO loss ln 2, a LoRA file stock ZImagePipeline loads (slow: every stage)."""

import hashlib

import torch

PROMPTS = ["a red cube on a table", "a blue bird in the sky"]


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_tiny_z_image_is_deterministic_with_the_real_classes(tmp_path):
    from diffusers import AutoencoderKL, DiffusionPipeline, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Model

    from aifeedback.zoo import ZOO

    hashes = []
    for i in range(2):
        ZOO["tiny-z-image"].build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]  # the pad tokens the class leaves uninitialised included
    tokenizers = [sorted((p.name, p.read_bytes()) for p in (tmp_path / str(i) / "tokenizer").iterdir()) for i in (0, 1)]
    assert tokenizers[0] == tokenizers[1]
    assert isinstance(pipe, ZImagePipeline) and isinstance(pipe.transformer, ZImageTransformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen3Model) and isinstance(pipe.tokenizer, Qwen2Tokenizer)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.cap_feat_dim == pipe.text_encoder.config.hidden_size
    chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    assert chat == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"  # Qwen3's template for this turn


def test_real_size_z_image_holds_the_released_parameter_counts():
    """The published configs (zoo/tiny_z_image.py) build, on the meta device, the released parameter counts:
    Tongyi-MAI/Z-Image-Turbo's transformer 6,154,908,736 (the total its safetensors hold, as third-party records of
    the hub repo give it; the model card rounds to "6B") and its text encoder Qwen/Qwen3-4B 4,022,468,096 (the hub's
    safetensors total; tied embeddings, so Qwen3Model without the LM head holds them all). The VAE is FLUX.1's,
    counted in tests/test_bench.py."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from aifeedback.zoo.tiny_z_image import REAL_TEXT_ENCODER, REAL_TRANSFORMER

    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**REAL_TRANSFORMER)
        text_encoder = Qwen3Model(Qwen3Config(**REAL_TEXT_ENCODER))
    assert sum(p.numel() for p in transformer.parameters()) == 6_154_908_736
    assert sum(p.numel() for p in text_encoder.parameters()) == 4_022_468_096
