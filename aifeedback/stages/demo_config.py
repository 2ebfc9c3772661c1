"""`aif demo`'s settings: `DemoConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/demo.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import option
from aifeedback.losses import LOSSES
from aifeedback.zoo import toy_models

DEFAULT_LOSS = "dpo"  # its eval folder keeps the demo's original name, OUT/eval/


@dataclass
class DemoConfig:
    out: str = option("runs/demo", "output folder: prompts/, generate/, pairs/, LOSS/ (the run), eval/ and "
                                   "commands.txt")
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
    loss: Literal[LOSSES.names()] = option(DEFAULT_LOSS, "training objective (`aif train --help` lists them); the "
                                                         "run goes to OUT/LOSS/, its eval to OUT/eval-LOSS/ (dpo: "
                                                         "OUT/eval/)")
    swap_labels: bool = option(False, "train on the pairs with winner and loser swapped (OUT/pairs-swapped/; the run "
                                      "and eval folders get a -swapped suffix): a sanity check, the tuned model "
                                      "should then LOSE to its base")
    train_steps: int = option(150, "optimizer steps", min=1)
    batch_size: int = option(16, "pairs per optimizer step", min=1)
    # null: the loss's own toy default (losses/__init__.py `toy_beta`): a beta's scale is the objective's (DPO's
    # 2000 as for SD1.5, with the paper's 0.5 factor; MaPO's 0.1 as in its paper)
    beta: Optional[float] = option(None, "the loss's beta; null = its toy default (dpo 2000, mapo 0.1, ...: README "
                                         "'Preference objectives')", min=0.0)
    # DPO's 5e-5: the reward rises on every held-out twin while most images keep their captioned colours; at 1e-4
    # fidelity falls noticeably, and at 3e-4 most images turn red (fidelity ~5-20%): reward hacking
    lr: Optional[float] = option(None, "AdamW learning rate (no weight decay, no warmup, no clipping); null = the "
                                       "loss's toy default (5e-5 for dpo)", min=0.0)
    seed: int = option(0, "seed of the caption split, the image seeds and the training run", min=0)
    overwrite: bool = option(False, "replace a different run's results in --out", identity=False)
    progress: bool = option(True, "show progress bars (in a log: a plain line every 30 s)", identity=False)

    def train_beta(self) -> float:
        return LOSSES[self.loss].toy_beta if self.beta is None else self.beta

    def train_lr(self) -> float:
        return LOSSES[self.loss].toy_lr if self.lr is None else self.lr

    def run_name(self, stage: str) -> str:
        """The folder of the training run ("train") or the eval ("eval") under --out: one per loss and labelling, so
        runs of several objectives share one generate and score output."""
        if stage == "train":
            name = self.loss
        else:
            name = stage if self.loss == DEFAULT_LOSS else f"{stage}-{self.loss}"
        return f"{name}-swapped" if self.swap_labels else name

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
