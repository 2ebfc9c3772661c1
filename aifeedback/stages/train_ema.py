"""An exponential moving average (EMA) of the trained weights, for `aif train --ema-decay D`.

diffusers' `EMAModel` (as its train_text_to_image.py --use_ema uses it) keeps a shadow copy of the trained parameters
(the whole UNet for a full fine-tune, the adapter weights for LoRA) and after every optimizer step n moves it towards
them: shadow -= (1 - d_n) * (shadow - param), with d_n = min(D, (1 + k) / (10 + k)), k = n - 1, and d_1 = 0 (the
first step copies the weights). The warm-up term keeps the early average from clinging to the starting weights.

On disk the average is a model in the same format as the trained weights, in the checkpoint's `ema/` folder
(`ema/unet/` or `ema/pytorch_lora_weights.safetensors`): anything that loads a checkpoint's weights loads it, and
`aif export` exports it as the final model. The step count goes into trainer_state.json (`ema_step`), so a resumed
run continues the same average bit for bit (the shadow is stored in float32, as it is held).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from diffusers.training_utils import EMAModel

STATE_KEY = "ema_step"  # trainer_state.json: EMA updates so far (the decay's warm-up depends on it)


class WeightsEMA:
    """The moving average of `params` (the trained parameters, in order)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.ema = EMAModel(params, decay=decay)

    def step(self) -> None:
        """One update, after an optimizer step."""
        self.ema.step(self.params)

    @property
    def steps(self) -> int:
        return self.ema.optimization_step

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the trained parameters for the duration of the block (to save it), then the trained
        weights back, exactly."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def load(self, load_weights: Callable[[], None], steps: int) -> None:
        """Restore a saved average: `load_weights()` loads the checkpoint's ema/ weights into the model (whose
        trained weights are kept aside and put back), and the average continues from update `steps`."""
        self.ema.store(self.params)
        try:
            load_weights()
            self.ema.shadow_params = [p.detach().clone() for p in self.params]
        finally:
            self.ema.restore(self.params)
        self.ema.optimization_step = steps
