"""`aif demo`'s settings: `DemoConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/demo.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aifeedback.config import option
from aifeedback.zoo import toy_models


@dataclass
class DemoConfig:
    out: str = option("runs/demo", "output folder: prompts/, generate/, pairs/, dpo/, eval/ and commands.txt")
    model: str = option(toy_models()[0], "the toy model the loop runs on (the zoo's toy models: a DDPM UNet, or a "
                                         "flow-matching MMDiT as SD3/FLUX; see `aif models`)", choices=toy_models())
    prompts: int = option(64, "training captions (each gets --images-per-prompt candidates)", min=2)
    images_per_prompt: int = option(8, "candidates per caption (K); the best- and worst-scored become a pair", min=2)
    eval_prompts: int = option(64, "held-out captions for the eval (none of them is a training caption)", min=1)
    eval_seeds: int = option(4, "images per held-out caption and model (base and tuned twins share a seed)", min=1)
    scorer: str = option("redness", "the reward that labels the pairs, e.g. redness, brightness, color:blue")
    sampling_steps: int = option(10, "sampling steps for every image (the toy model's sampler: DDIM, or Euler for "
                                     "flow matching)", min=1)
    guidance: float = option(1.0, "classifier-free guidance scale for every image (1 = off)", min=0.0)
    train_steps: int = option(150, "Diffusion-DPO optimizer steps", min=1)
    batch_size: int = option(16, "pairs per DPO step", min=1)
    beta: float = option(2000.0, "DPO beta (with the paper's 0.5 factor; 2000 as for SD1.5)", min=0.0)
    # 5e-5: the reward rises on every held-out twin while most images keep their captioned colours; at 1e-4 fidelity
    # falls noticeably, and at 3e-4 most images turn red (fidelity ~5-20%): reward hacking, as the summary shows
    lr: float = option(5e-5, "AdamW learning rate (no weight decay, no warmup, no clipping)", min=0.0)
    seed: int = option(0, "seed of the caption split, the image seeds and the training run", min=0)
    overwrite: bool = option(False, "replace a different run's results in --out", identity=False)
    progress: bool = option(True, "show progress bars (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        from aifeedback.zoo.toy_world import all_captions

        n = len(all_captions())
        if self.prompts + self.eval_prompts > n:
            return [f"prompts + eval_prompts ({self.prompts} + {self.eval_prompts}) exceeds the toy world's {n} "
                    f"distinct captions; lower one of them"]
        return []

    def preflight(self) -> None:
        """Fail fast, before torch is imported and the toy model is built: the reward's name."""
        from aifeedback.preflight import check_scorers

        check_scorers([self.scorer])
