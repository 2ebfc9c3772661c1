"""`aif rl --lora-rank 0`: full fine-tuning of the whole denoiser (as aif train), with a frozen copy as the KL
reference and EMA; its checkpoints resume exactly and `aif export` reads them."""


import pytest
import torch
from safetensors.torch import load_file

from aifeedback.config import build_config
from tests.rl_helpers import metrics, prompt_file, run_rl, same_weights

TINY = dict(prompts_per_epoch=2, group_size=2, steps=3, reward="redness", lora_rank=0, batch_size=2, resolution=32,
            progress=False, lr=1e-3)


@pytest.fixture()
def prompts(tmp_path):
    return prompt_file(tmp_path)


def rl(prompts, out, **kw):
    return run_rl(TINY, prompts, out, **kw)


def weights(out, epoch, denoiser, sub=""):
    folder = out / "checkpoints" / f"checkpoint-{epoch:06d}" / sub / denoiser
    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.parametrize("model, denoiser, kw, check, kl", [
    ("tiny-sd3", "transformer", dict(algorithm="grpo", kl_beta=0.5), "ratio_dev_first", "kl_loss"),
    ("tiny-sd15", "unet", dict(algorithm="nft", kl_beta=0.1, ema_decay=0.5), "v_dev_first", "kl_div"),
])
def test_full_fine_tuning_trains_the_whole_denoiser_resumes_exactly_and_exports(prompts, tmp_path, model, denoiser,
                                                                                kw, check, kl):
    from aifeedback.families.loading import load_pipeline

    straight = rl(prompts, tmp_path / "straight", model=model, epochs=2, **kw)
    m = metrics(straight)
    assert [r[check] for r in m] == [0.0, 0.0] and all(r["grad_norm"] > 0 for r in m)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in m)
    assert m[1][kl] > 0  # the frozen copy stays at the base weights while the policy moves
    base = getattr(load_pipeline(model), denoiser).state_dict()
    trained = weights(straight, 2, denoiser)
    assert not any("lora" in k for k in trained) and trained.keys() == base.keys()  # the whole denoiser
    moved = [k for k in base if not torch.equal(base[k], trained[k])]
    assert len(moved) > len(base) // 2, f"only {len(moved)} of {len(base)} tensors moved"
    exported = trained
    if kw.get("ema_decay"):
        exported = weights(straight, 2, denoiser, "ema")  # aif export takes the moving average
        assert not same_weights(exported, trained) and not same_weights(exported, base)

    resumed = tmp_path / "resumed"
    rl(prompts, resumed, model=model, epochs=1, **kw)
    rl(prompts, resumed, model=model, epochs=2, **kw)
    assert same_weights(weights(resumed, 2, denoiser), trained)
    if kw.get("ema_decay"):
        assert same_weights(weights(resumed, 2, denoiser, "ema"), exported)
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in m]

    from aifeedback.stages.export import ExportConfig, run

    out = run(build_config(ExportConfig, dict(checkpoint=str(straight), out=str(tmp_path / "export"))))
    pipe = load_pipeline(model)
    loaded = type(getattr(pipe, denoiser)).from_pretrained(out, subfolder=denoiser)
    assert same_weights(loaded.state_dict(), exported)
