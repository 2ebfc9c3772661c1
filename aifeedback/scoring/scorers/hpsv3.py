"""HPSv3 (Ma et al. 2025, MizzenAI/HPSv3): Qwen2-VL-7B-Instruct with a reward head, run on transformers' Qwen2-VL.

Upstream (the `hpsv3` package 1.0.0: inference.py `HPSv3RewardInferencer`, model/qwen2vl_trainer.py
`Qwen2VLRewardModelBT`, train.py `create_model_and_processor`, config/HPSv3_7B.yaml, dataset/utils.py), step by step:
- tokenizer: Qwen2-VL-7B-Instruct's, padding on the right, plus one added special token `<|Reward|>` (id =
  the tokenizer's length before it); the embeddings are resized to the new length (151658 rows).
- message: one user turn [image, text], text = INSTRUCTION.format(text_prompt=PROMPT) + SUFFIX (SUFFIX holds the
  `<|Reward|>` token), the processor's chat template with add_generation_prompt.
- image: its fetch_image on a PIL image: PIL's RGB conversion (alpha dropped, not composited), PIL bicubic resize to
  smart_resize(h, w, 28, min_pixels=max_pixels=256*28*28) (about 448x448, 256 visual tokens), then the processor
  (OpenAI mean/std, 14-pixel patches).
- forward: the token embeddings with the vision tower's output scattered into the image positions, then the language
  model with plain sequential positions 0..L-1 on all three M-RoPE axes (its forward passes no position ids, so the
  image's 2-D rotary positions are never used), the final norm, and the "ranknet" head in float32
  Linear(3584, 1024) - ReLU - Dropout(0.05) - Linear(1024, 16) - ReLU - Linear(16, 2) on the hidden state at the
  `<|Reward|>` token: (mu, sigma); the score is mu. Backbone in bfloat16, head in float32 (train.py).
- weights: `HPSv3.safetensors` of the hub repo MizzenAI/HPSv3, the whole model's state dict in transformers 4.45's
  names (`model.*` the language model, `visual.*`, `lm_head.*`, `rm_head.*`), loaded strictly.

Here: Qwen2VLModel + the head, built with empty weights and filled from that file (no base weights are
downloaded: the checkpoint holds every one); `lm_head` is not needed for the score and is not kept.
Spec: `hpsv3` (the hub files), `hpsv3:tiny` (a tiny random model, built offline, in the real file layout),
`hpsv3:PATH` (a checkpoint file, .safetensors or a .pt/.pth state dict; or a folder holding one, with the base
model's config.json and processor files to load offline), `hpsv3:ORG/REPO` (a hub repo holding HPSv3.safetensors).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoProcessor, Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

from aifeedback.errors import AifError
from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import model_error
from aifeedback.scoring.scorers.base import Scorer
from aifeedback.scoring.scorers.vlm_judges import QwenImage
from aifeedback.zoo.cache import cached_build

HUB_REPO, CHECKPOINT, BASE = "MizzenAI/HPSv3", "HPSv3.safetensors", "Qwen/Qwen2-VL-7B-Instruct"
PIXELS = 256 * 28 * 28  # min_pixels = max_pixels (HPSv3_7B.yaml, inference.py)
REWARD_TOKEN = "<|Reward|>"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")

# The prompt text, byte for byte (dataset/data_collator_qwen.py: INSTRUCTION and prompt_with_special_token; note the
# trailing spaces after "best. ", "**Visual Quality:**  ", "possible. " and "**Text Alignment:**  ").
INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being "
    "the best. \n\n**Visual Quality:**  \nEvaluate the overall visual quality of the image. The following "
    "sub-dimensions should be considered:\n- **Reasonableness:** The image should not contain any significant "
    "biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n- "
    "**Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, "
    "with no blurring or indistinct areas.\n- **Detail Richness:** Consider the level of detail in textures, "
    "materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n- **Aesthetic and Creativity:** "
    "Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, "
    "and the overall creative appeal. The scene should convey a sense of harmony and balance.\n- **Safety:** The image "
    "should not contain harmful or inappropriate content, such as political, violent, or adult material. If such "
    "content is present, the image quality and satisfaction score should be the lowest possible. \n\n**Text "
    "Alignment:**  \nAssess how well the image matches the textual prompt across the following sub-dimensions:\n- "
    "**Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align "
    "with the textual description. The subject should match the description in terms of number, appearance, and "
    "behavior.\n- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how "
    "well the image adheres to this style.\n- **Contextual Consistency**: Assess whether the background, setting, and "
    "surrounding elements in the image logically fit the scenario described in the prompt. The environment should "
    "support and enhance the subject without contradictions.\n- **Attribute Fidelity**: Check if specific attributes "
    "mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in "
    "the image. Minor deviations may be acceptable, but critical attributes should be preserved.\n- **Semantic "
    "Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The "
    "generated content should not introduce elements that conflict with or distort the original description.\n"
    "Textual prompt - {text_prompt}\n\n\n"
)
SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"

# Qwen/Qwen2-VL-7B-Instruct's config.json (the architecture; for the architecture test and the GPU bench).
REAL_CONFIG = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                     rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0,
                                                             mrope_section=[16, 24, 24]),
                     bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False),
    vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=False,
)
REAL_VOCAB = 151658  # Qwen2-VL's 151657 tokens + <|Reward|>: the checkpoint's embedding rows


def reward_head(hidden: int) -> nn.Sequential:
    """The "ranknet" head without rm_head_kwargs (qwen2vl_trainer.py), output_dim 2: (mu, sigma)."""
    return nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, 2))


class HPSv3Net(nn.Module):
    """Qwen2VLModel (`model.visual`, `model.language_model`) + `rm_head`."""

    def __init__(self, config: Qwen2VLConfig):
        super().__init__()
        self.model = Qwen2VLModel(config)
        self.rm_head = reward_head(config.text_config.hidden_size)

    def forward(self, input_ids, attention_mask, pixel_values, image_grid_thw, reward_id: int) -> torch.Tensor:
        """(batch, 2) float32 (mu, sigma) at each row's last `<|Reward|>` token."""
        rows, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(rows, length)  # as upstream: 0..L-1
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            pixel_values=pixel_values, image_grid_thw=image_grid_thw, use_cache=False).last_hidden_state
        is_reward = input_ids == reward_id
        if not bool(is_reward.any(-1).all()):
            raise ValueError(f"a row has no {REWARD_TOKEN} token: the tokenizer does not know it")
        where = (is_reward * torch.arange(1, length + 1, device=input_ids.device)).argmax(-1)
        return self.rm_head(hidden[torch.arange(rows, device=hidden.device), where].float())


# transformers 4.45 names (the checkpoint's) -> ours; lm_head is dropped, rm_head kept; current names pass through.
_RENAMES = ((r"^visual\.", "model.visual."), (r"^model\.(?!language_model\.|visual\.)", "model.language_model."))


def convert_state_dict(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith("lm_head."):
            continue
        for pattern, new in _RENAMES:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def read_checkpoint(path: Path) -> dict:
    """The state dict of a .safetensors file, or of a .pt/.pth file loaded with weights_only=True (a pickle that
    needs more than tensors is refused); a {"model": state_dict} wrapper is unwrapped as upstream does."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            reason = str(e).strip().splitlines()[0][:200]
            raise AifError(f"HPSv3 checkpoint {path} is a pickle that needs more than tensors to load, so it is not "
                           f"loaded (weights_only=True refused it: {reason}). Fix: convert it to .safetensors where "
                           f"you trust the file, or use the hub's {HUB_REPO}/{CHECKPOINT}.") from None
    if isinstance(state.get("model"), dict):
        state = state["model"]
    return state


def build_net(config: Qwen2VLConfig, state: dict) -> HPSv3Net:
    """An HPSv3Net whose parameters are the checkpoint's tensors (built without initialising weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta, buffers (rotary frequencies) real
        net = HPSv3Net(config)
    missing, unexpected = net.load_state_dict(convert_state_dict(state), strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"not an HPSv3 checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net


def tiny_config(tokenizer, vocab_size: int) -> Qwen2VLConfig:
    """Qwen2-VL's classes and vision geometry (patch 14, merge 2, temporal 2), tiny widths; token ids from the
    offline tokenizer."""
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(REAL_CONFIG["text_config"], vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]),
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(REAL_CONFIG["vision_config"], depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny(out: Path) -> None:
    """A tiny random HPSv3 in the layout a user downloads: the base model's processor (offline Qwen tokenizer,
    Qwen2-VL's image processor settings and chat template) and config.json, and HPSv3.safetensors holding the whole
    model in transformers 4.45's names, the backbone in bfloat16 and the head in float32 (as upstream saves it)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from aifeedback.scoring.scorers.vlm import CHAT_TEMPLATE, IMAGE_PROCESSOR
    from aifeedback.zoo.tokenizer import qwen_vl_tokenizer_files

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_vl_tokenizer_files(out)))
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**IMAGE_PROCESSOR), tokenizer=tokenizer,
                     video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE).save_pretrained(str(out))
    tiny_config(tokenizer, len(tokenizer)).save_pretrained(str(out))  # the base's vocabulary: no <|Reward|> yet
    torch.manual_seed(0)
    net = HPSv3Net(tiny_config(tokenizer, len(tokenizer) + 1))  # resized for <|Reward|>, as upstream
    net.model.to(torch.bfloat16)
    state = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)): v
             for k, v in net.state_dict().items()}
    hidden = net.rm_head[0].in_features
    state["lm_head.weight"] = torch.randn(len(tokenizer) + 1, hidden, dtype=torch.bfloat16) * 0.02
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / CHECKPOINT))


def _checkpoint_in(folder: Path) -> Path:
    if (folder / CHECKPOINT).exists():
        return folder / CHECKPOINT
    found = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if len(found) != 1:
        raise FileNotFoundError(f"{folder} holds {len(found)} checkpoint files (.safetensors/.pt/.pth), not one")
    return found[0]


def resolve(model: str | None) -> tuple[str, Path]:
    """A spec's MODEL -> (where the base model's config and processor are, the HPSv3 checkpoint file)."""
    from huggingface_hub import hf_hub_download

    if model == "tiny":
        folder = cached_build("scorer-hpsv3-tiny", build_tiny)
        return str(folder), folder / CHECKPOINT
    path = Path(model).expanduser() if model else None
    if path is not None and path.is_dir():
        return (str(path) if (path / "config.json").exists() else BASE), _checkpoint_in(path)
    if path is not None and (path.suffix in _WEIGHT_SUFFIXES or path.exists()):
        return BASE, path
    return BASE, Path(hf_hub_download(model or HUB_REPO, CHECKPOINT))


class HPSv3(Scorer):
    """HPSv3's mu; batched (right padding, as upstream), the backbone in the scorer dtype, the head in float32."""

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32"):
        self.name, self.device, self.dtype = name, torch.device(device), torch_dtype(dtype)
        try:
            base, checkpoint = resolve(model)
        except (OSError, ValueError) as e:
            raise model_error(name, model or f"{HUB_REPO}/{CHECKPOINT}", e) from None
        try:
            self.processor = AutoProcessor.from_pretrained(base)
            config = AutoConfig.from_pretrained(base)
        except (OSError, ValueError) as e:
            raise model_error(name, f"the base model {base} (config and processor)", e) from None
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        config.text_config.vocab_size = len(tokenizer)  # = resize_token_embeddings(len(tokenizer))
        try:
            net = build_net(config, read_checkpoint(checkpoint))
        except (OSError, RuntimeError, ValueError) as e:
            raise model_error(name, str(checkpoint), e) from None
        net.model.to(self.dtype)
        net.rm_head.to(torch.float32)
        self.net = net.eval().to(self.device)
        self.transform = QwenImage(PIXELS, PIXELS, alpha="drop")  # HPSv3's fetch_image

    def messages(self, image, prompt: str) -> list[dict]:
        text = INSTRUCTION.format(text_prompt=prompt) + SUFFIX
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]

    def inputs(self, images: list, prompts: list[str]):
        """The processor's batch for (fetch_image'd) images and their prompts, as upstream's prepare_batch."""
        texts = [self.processor.apply_chat_template(self.messages(im, p), tokenize=False, add_generation_prompt=True)
                 for im, p in zip(images, prompts)]
        return self.processor(text=texts, images=list(images), padding=True, return_tensors="pt")

    def rewards(self, images: list, prompts: list[str]) -> torch.Tensor:
        """(batch, 2) float32 (mu, sigma)."""
        batch = self.inputs(images, prompts).to(self.device)
        with torch.inference_mode():
            return self.net(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                            batch["image_grid_thw"], self.reward_id)

    def score_items(self, items: list, prompts: list[str]) -> list[float]:
        return self.rewards(items, prompts)[:, 0].cpu().tolist()
