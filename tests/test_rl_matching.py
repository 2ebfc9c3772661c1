"""`aif rl --algorithm nft | awm` end to end on tiny flow and UNet families (LoRA, one process): the first-update
checks, the weights moving, exact resume, and the forward process checked by hand."""


import pytest
import torch

from tests.rl_helpers import lora, metrics, prompt_file, run_rl

TINY = dict(prompts_per_epoch=2, group_size=2, steps=3, reward="redness", lora_rank=2, batch_size=2, resolution=32,
            progress=False, lr=1e-3)


@pytest.fixture()
def prompts(tmp_path):
    return prompt_file(tmp_path)


def rl(prompts, out, **kw):
    return run_rl(TINY, prompts, out, **kw)


CHECK = {"nft": "v_dev_first", "awm": "ratio_dev_first"}


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sd15"])
def test_nft_and_awm_train_on_flow_and_unet_families_with_the_first_update_check(prompts, tmp_path, model,
                                                                                 algorithm):
    # batch 2 of 4 images: two optimizer steps per epoch, so the second one sees moved weights
    out = rl(prompts, tmp_path / "run", model=model, algorithm=algorithm, epochs=2, kl_beta=0.1)
    m = metrics(out)
    assert [r[CHECK[algorithm]] for r in m] == [0.0, 0.0]  # the stored old values are the sampling policy's
    dev = "v_dev" if algorithm == "nft" else "ratio_dev"
    assert all(r[dev] > 0 for r in m)  # ... and the second optimizer step of an epoch has moved away from them
    for r in m:
        assert all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in r.values()), r
    assert m[1]["kl_div" if algorithm == "nft" else "kl_loss"] > 0 and all(r["grad_norm"] > 0 for r in m)
    a, b = lora(out, 1), lora(out, 2)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # epoch 2 moved the adapters


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_nft_and_awm_resume_bitwise(prompts, tmp_path, algorithm):
    kw = dict(model="tiny-sd3", algorithm=algorithm, timestep_fraction=0.67)  # 2 of 3 steps, random per sample
    straight = rl(prompts, tmp_path / "straight", epochs=2, **kw)
    resumed = tmp_path / "resumed"
    rl(prompts, resumed, epochs=1, **kw)
    rl(prompts, resumed, epochs=2, **kw)
    speed = ("images_per_s", "updates_per_s")
    assert [{k: v for k, v in r.items() if k not in speed} for r in metrics(straight)] == \
           [{k: v for k, v in r.items() if k not in speed} for r in metrics(resumed)]
    a, b = lora(straight, 2), lora(resumed, 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nft_trains_on_data_from_the_sde_sampler_too(prompts, tmp_path):
    out = rl(prompts, tmp_path / "sde", model="tiny-sd3", algorithm="nft", sampler="sde", epochs=1)
    m = metrics(out)
    assert m[0]["v_dev_first"] == 0.0 and m[0]["v_dev"] > 0
    from datasets import load_dataset

    ode = rl(prompts, tmp_path / "ode", model="tiny-sd3", algorithm="nft", epochs=1)
    a = load_dataset("parquet", data_dir=str(out / "rollouts" / "data"), split="train")["image"]
    b = load_dataset("parquet", data_dir=str(ode / "rollouts" / "data"), split="train")["image"]
    assert a != b  # the SDE's noise changed the sampled images
