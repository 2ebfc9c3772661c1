"""The quantized frozen base of a LoRA run (`aif train --base-quantization`): which backend each choice uses, and
the diffusers pipeline quantization config that loads the denoiser and the text encoders quantized.

Light at import (no torch): `stages/train_config.py` reads `QUANTIZATIONS` to check the option before any model
loads; the heavy imports happen inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Quantization:
    """One --base-quantization choice: the package (and aifeedback extra) that runs it, whether it needs a GPU."""

    package: str
    extra: str
    cuda_only: bool
    what: str


# nf4: QLoRA's 4-bit NormalFloat with double quantization and bf16 compute (bitsandbytes; diffusers' bitsandbytes
# quantizer refuses to load without a GPU). int8 / fp8: torchao weight-only int8 / float8 (per-channel scales), which
# run on a CPU too.
QUANTIZATIONS = {
    "nf4": Quantization("bitsandbytes", "bnb", True, "bitsandbytes 4-bit NF4, double quantization"),
    "int8": Quantization("torchao", "torchao", False, "torchao int8 weight-only"),
    "fp8": Quantization("torchao", "torchao", False, "torchao float8 (e4m3) weight-only"),
}
QUANTIZATION_CHOICES = ("none", *QUANTIZATIONS)
QUANTIZATION_HELP = ("load the frozen denoiser and text encoders of a LoRA run quantized (the adapters train in "
                     "fp32 on top; the DPO reference, adapters off, runs the same quantized weights): none, "
                     + ", ".join(f"{k} ({q.what}{', CUDA only' if q.cuda_only else ''}; "
                                 f"pip install 'aifeedback[{q.extra}]')" for k, q in QUANTIZATIONS.items()))

SAMPLING_QUANTIZATION_HELP = ("load the base model's denoiser and text encoders quantized (a --tuned LoRA applies on "
                              "top): none, nf4 (bitsandbytes, CUDA), int8 or fp8 (torchao), as aif train "
                              "--base-quantization")


def quantization_problems(choice: str, lora_rank: int) -> list[str]:
    """Why --base-quantization cannot apply to this run (a full fine-tune trains the weights it would freeze)."""
    if choice == "none" or lora_rank > 0:
        return []
    return [f"base_quantization {choice} quantizes the frozen base of a LoRA run, but lora_rank is 0 (a full "
            f"fine-tune trains every weight, which cannot be stored quantized): set --lora-rank (e.g. 16), or pass "
            f"--base-quantization none"]


def pipeline_quantization(choice: str, components: list[str], compute_dtype: Any) -> Any:
    """diffusers' `PipelineQuantizationConfig` quantizing `components` (the denoiser and the text encoders) with the
    chosen backend: diffusers' config class for the denoiser, transformers' for each text encoder."""
    import diffusers
    import transformers
    from diffusers.quantizers import PipelineQuantizationConfig

    if choice == "nf4":
        kwargs = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                      bnb_4bit_compute_dtype=compute_dtype)
        configs = {lib: lib.BitsAndBytesConfig(**kwargs) for lib in (diffusers, transformers)}
    else:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        kind = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[choice]
        configs = {lib: lib.TorchAoConfig(kind()) for lib in (diffusers, transformers)}
    return PipelineQuantizationConfig(quant_mapping={
        c: configs[transformers if c.startswith("text_encoder") else diffusers] for c in components})


def quantized_base_dtype(choice: str, mixed_precision: str, device_type: str, dtype: str) -> str:
    """The dtype `aif train` loads a quantized base in (`dtype`, the unquantized rule, where `choice` is none): the
    compute dtype, as its unquantized rest (norms, biases) is never cast later; on a CPU fp32, because torchao's
    weight-only layers return fp32 activations there, which CPU GroupNorm refuses next to bf16 weights (UNets)."""
    if choice == "none":
        return dtype
    return "float32" if device_type == "cpu" else "float16" if mixed_precision == "fp16" else dtype


def is_quantized(model: Any) -> bool:
    """Whether a diffusers or transformers model was loaded through a quantization config."""
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


def place(model: Any, device: Any, dtype: Any = None) -> Any:
    """`model.to(device, dtype)`, except that a quantized model only moves: its stored weights keep their quantized
    type, and the rest (norms, biases) stays in the dtype it was loaded in (bitsandbytes refuses a cast)."""
    return model.to(device) if is_quantized(model) else model.to(device=device, dtype=dtype)


def keep_frozen_out_of_ddp(model: Any) -> None:
    """DDP broadcasts every parameter and buffer from rank 0 when it wraps a model, which quantized tensors cannot
    take part in (torchao's have no `view`). The frozen base is loaded from the same files in every process, so only
    the trainable adapters need DDP: the rest is left out of it."""
    if not is_quantized(model):
        return
    from torch.nn.parallel import DistributedDataParallel

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
