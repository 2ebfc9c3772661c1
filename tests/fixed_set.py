"""Test helper: DPO loss and implicit accuracy of a checkpoint vs its base on a fixed set, fixed noise and timesteps."""
import torch


def fixed_set_metrics(model, ckpt, data, dataset, resolution=16, draws=8, beta=500.0):
    """DPO loss / implicit accuracy of a checkpoint vs the base on a fixed set with fixed noise and timesteps."""
    from diffusers import UNet2DConditionModel

    from aifeedback.data import pairs as D
    from aifeedback.families.diffusion import TextEncoders, noise_scheduler, training_target
    from aifeedback.families.loading import family, load_pipeline
    from aifeedback.losses.base import denoising_mse
    from aifeedback.losses.dpo import dpo
    from aifeedback.storage.checkpoints import LORA_FILE, checkpoint_kind
    pipe = load_pipeline(model)
    text = TextEncoders.from_pipeline(pipe)
    sched = noise_scheduler(pipe)
    table = D.open_table(data, str(dataset), "train")
    pairs, _ = D.filter_labels(table)
    shape = (4, resolution // 2, resolution // 2)
    ls, _ = D.stored_latent_shape(table, pairs, shape)
    ds = D.PairDataset(table, pairs, D.Transform(resolution, latent_shape=ls), 0, window=1)
    batch = D.collate([ds.load(i) for i in range(len(pairs))])
    B = len(pairs)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        if "latents" in batch:
            lat = torch.cat([batch["latents"][:, 0], batch["latents"][:, 1]])
        else:
            pix = torch.cat([batch["pixels"][:, 0], batch["pixels"][:, 1]])
            lat = pipe.vae.encode(pix).latent_dist.mean * pipe.vae.config.scaling_factor
        emb, pooled = text.encode(batch["captions"])
    lora = checkpoint_kind(ckpt) == "lora"
    ref = pipe.unet
    if lora:
        pipe.load_lora_weights(str(ckpt / LORA_FILE))
        pol = pipe.unet
    else:
        pol = UNet2DConditionModel.from_pretrained(ckpt / "unet")
    out = []
    for _ in range(draws):
        noise = torch.randn(lat[:B].shape, generator=g).repeat(2, 1, 1, 1)
        t = torch.randint(0, 1000, (B,), generator=g).repeat(2)
        noisy = sched.add_noise(lat, noise, t)
        tgt = training_target(sched, lat, noise, t)
        cond = {}
        if family(pipe) == "sdxl":
            time_ids = torch.cat([batch["time_ids"][:, 0], batch["time_ids"][:, 1]])
            cond = {"added_cond_kwargs": {"text_embeds": pooled.repeat(2, 1), "time_ids": time_ids}}
        with torch.no_grad():
            m = denoising_mse(pol(noisy, t, emb.repeat(2, 1, 1), **cond).sample, tgt).chunk(2)
            if lora:
                pipe.unet.disable_adapters()
            r = denoising_mse(ref(noisy, t, emb.repeat(2, 1, 1), **cond).sample, tgt).chunk(2)
            if lora:
                pipe.unet.enable_adapters()
        out.append(dpo(*m, *r, beta))
    return sum(o.loss.item() for o in out) / draws, sum(o.metrics["implicit_acc"].item() for o in out) / draws
