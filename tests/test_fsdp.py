"""FSDP without a GPU: accelerate refuses FSDP on a CPU, so the trainer's validation and LoRA reference pass are
driven here by hand under torch's FSDP (gloo, 2 CPU processes) around the tiny SD1.5 UNet, wrapped as the shipped
recipes/accelerate/fsdp_8gpu.yaml wraps it. Every process must join every forward of the sharded model. And a LoRA
gathered from FSDP shards, written by save_lora (tests/test_rl_fsdp.py runs whole stages under accelerate's FSDP)."""

import json
import os
import warnings
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from tests.launch import free_port

STEPS, SEEDS = 2, [0, 1]  # validation: one UNet call per step and image (guidance batches its two halves)


class FakeFSDPAccelerator:
    """The slice of `Accelerator` the trainer's validation and reference pass use, reporting FSDP."""

    def __init__(self, rank: int, distributed_type):
        self.is_main_process, self.distributed_type, self.device = rank == 0, distributed_type, torch.device("cpu")

    def autocast(self):
        return nullcontext()

    def unwrap_model(self, model):
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model)

    def wait_for_everyone(self):
        if dist.is_initialized():
            dist.barrier()


def _inputs(unet):
    g = torch.Generator().manual_seed(1)
    size = unet.config.sample_size
    noisy = torch.randn(2, unet.config.in_channels, size, size, generator=g)
    embeds = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return noisy, torch.tensor([10, 500]), {"embeds": embeds}, torch.randn(noisy.shape, generator=g)


def _worker(rank: int, port: int, out: str) -> None:
    from accelerate.utils import DistributedType
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from peft import LoraConfig
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline
    from aifeedback.losses.base import denoising_mse
    from aifeedback.stages.train import TrainRecipe
    from aifeedback.stages.train_validation import validation_grid

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*has both parameters with requires_grad")  # as accelerate wraps LoRA
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: a forward only one process runs would otherwise wait on the others for 30 minutes.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    pipe = load_pipeline("tiny-sd15")
    family, unet = detect(pipe), pipe.unet
    torch.manual_seed(0)  # the same adapters on both processes (each one shards its own copy)
    unet.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=list(family.lora_targets)))
    with torch.no_grad():  # non-zero adapters, so the reference differs from the policy
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    noisy, t, prompts, target = _inputs(unet)
    cfg = SimpleNamespace(model="tiny-sd15", validation_prompts=["a red cat"], validation_seeds=SEEDS,
                          validation_steps=STEPS, validation_guidance=5.0)
    res, base = 32, Path(out)
    with torch.no_grad():
        policy = denoising_mse(family.predict(unet, noisy, t, prompts, None), target)
        unet.disable_adapters()
        expected_ref = denoising_mse(family.predict(unet, noisy, t, prompts, None), target)
        unet.enable_adapters()
    # The grid the unsharded path (one process, unwrapped model) draws: what FSDP must reproduce.
    validation_grid(cfg, FakeFSDPAccelerator(0, DistributedType.NO), pipe, family, unet, pipe.vae, res, 1,
                    base / f"plain{rank}")

    model = FSDP(unet, device_id=torch.device("cpu"), use_orig_params=True,
                 auto_wrap_policy=ModuleWrapPolicy({ResnetBlock2D, BasicTransformerBlock}))
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    acc = FakeFSDPAccelerator(rank, DistributedType.FSDP)
    recipe = TrainRecipe.__new__(TrainRecipe)
    recipe.ref, recipe.accelerator, recipe.model, recipe.family = None, acc, model, family
    rng = torch.get_rng_state()
    # As in a run: the step-0 baseline grid is the sharded model's first forward (FSDP initialises lazily there).
    validation_grid(cfg, acc, pipe, family, model, pipe.vae, res, 0, base / f"fsdp{rank}")
    baseline_calls = len(calls)
    with torch.no_grad():
        ref = recipe._reference_mse(noisy, t, prompts, None, target)
        ref_calls = len(calls) - baseline_calls
        policy_after = denoising_mse(family.predict(model, noisy, t, prompts, None), target)
    validation_grid(cfg, acc, pipe, family, model, pipe.vae, res, 1, base / f"fsdp{rank}")
    result = dict(ref_calls=ref_calls, baseline_calls=baseline_calls,
                  validation_calls=len(calls) - baseline_calls - ref_calls - 1,
                  ref=ref.tolist(), expected_ref=expected_ref.tolist(), policy=policy.tolist(),
                  policy_after=policy_after.tolist(), rng_kept=bool(torch.equal(rng, torch.get_rng_state())))
    (base / f"result{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.numerics
def test_fsdp_validation_and_lora_reference_run_on_every_process(tmp_path, tiny_sd15):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    for r in results:
        assert r["ref_calls"] == 1  # the reference went through the wrapped model, which gathers the shards
        assert r["validation_calls"] == r["baseline_calls"] == STEPS * len(SEEDS)  # all joined every forward
        assert r["rng_kept"]
        # The same float32 math on gathered copies of the same weights: equal up to summation order.
        np.testing.assert_allclose(r["ref"], r["expected_ref"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r["policy_after"], r["policy"], rtol=1e-5, atol=1e-7)  # adapters back on
        assert not np.allclose(r["ref"], r["policy"], rtol=1e-3)  # the adapters were really off for the reference
    assert not (tmp_path / "fsdp1").exists()  # the other process writes nothing
    plain = np.asarray(Image.open(tmp_path / "plain0/validation/step-000001.png"), dtype=np.int16)
    for step in (0, 1):  # the same weights at both: each grid is the unsharded one
        sharded = np.asarray(Image.open(tmp_path / f"fsdp0/validation/step-00000{step}.png"), dtype=np.int16)
        assert np.abs(sharded - plain).max() <= 2  # up to rounding to 8 bits of tiny float drift


def _lora_save_worker(rank: int, port: int, out: str) -> None:
    """One gloo process: tiny-sd3's transformer with a LoRA, written by save_lora unwrapped, and again from the full
    state dict gathered from FSDP (one unit per JointTransformerBlock, as fsdp_sd35_8gpu.yaml wraps it)."""
    from diffusers.models.attention import JointTransformerBlock
    from peft import LoraConfig
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from aifeedback.families import detect
    from aifeedback.families.loading import load_pipeline
    from aifeedback.storage.checkpoints import save_lora

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=1, timeout=timedelta(seconds=60))
    pipe = load_pipeline("tiny-sd3")
    fam, model = detect(pipe), pipe.transformer.requires_grad_(False)
    torch.manual_seed(0)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                 target_modules=fam.lora_target_modules(model)))
    save_lora(model, Path(out) / "plain", fam.lora_pipeline, denoiser=fam.denoiser)
    wrapped = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True,
                   auto_wrap_policy=ModuleWrapPolicy({JointTransformerBlock}))
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
        sd = wrapped.state_dict()  # what accelerate's get_state_dict gathers
    assert any("_fsdp_wrapped_module." in name for name, _ in wrapped.module.named_modules())
    save_lora(wrapped.module, Path(out) / "fsdp", fam.lora_pipeline, state_dict=sd, denoiser=fam.denoiser)
    dist.destroy_process_group()


def test_a_lora_gathered_from_fsdp_shards_is_written_as_the_unwrapped_one(tmp_path, aif_cache):
    """peft picks the adapter's entries by the model's module names, which carry FSDP's prefix inside an FSDP model
    while the gathered state dict's keys do not: save_lora keys them for peft (an empty LoRA, refused, before)."""
    from safetensors.torch import load_file

    from aifeedback.storage.checkpoints import LORA_FILE

    mp.spawn(_lora_save_worker, args=(free_port(), str(tmp_path)), nprocs=1)
    plain, fsdp = load_file(tmp_path / "plain" / LORA_FILE), load_file(tmp_path / "fsdp" / LORA_FILE)
    assert plain and plain.keys() == fsdp.keys() and all(torch.equal(plain[k], fsdp[k]) for k in plain)
