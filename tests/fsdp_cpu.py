"""`python -m tests.fsdp_cpu ARGS...`: the `aif` CLI (as `python -m aifeedback ARGS...`) in a process started by
`accelerate launch --use_fsdp` on a machine without a GPU, run under FSDP.

Why a patch is needed: accelerate selects FSDP only for accelerator launch types. On a host without a GPU the
stages build their Accelerator with cpu=True (dist.process_state, train_setup.make_accelerator), so accelerate's
AcceleratorState.__init__ sets DistributedType.MULTI_CPU (gloo) and never looks at the FullyShardedDataParallelPlugin
it was given from the launcher's ACCELERATE_USE_FSDP / FSDP_* environment: the run would silently be DDP. This
test-only patch makes the decision the GPU branch would make (distributed type FSDP, the plugin kept, and the device
"cpu", which torch's FSDP accepts as a device_id where accelerate's gloo device "cpu:0" is refused);
and `patch_prepare_model` stands in for `fsdp_sync_module_states`, which neither accelerate nor torch's FSDP1 allow
on a CPU. Everything else (accelerate's FSDP wrapping, its sharded save_state / load_state and get_state_dict, torch's
FSDP over gloo) is the product's and accelerate's own code. No product code is changed for it. Used by the FSDP
tests only (tests/test_rl_fsdp.py); `AIF_TEST_FORWARDS` and `AIF_TEST_HANG_S` add the checks described below."""

from __future__ import annotations

import os


def patch_accelerate_state() -> None:
    """After AcceleratorState's own __init__, a MULTI_CPU state given an FSDP plugin becomes an FSDP one."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # gloo's device is "cpu:0" (accelerate's MULTI_CPU device), which accelerate passes to FSDP as its
            # device_id; torch's FSDP compares it with the CPU's current device, "cpu", and refuses the mismatch
            self.device = torch.device("cpu")
            for key, value in (("distributed_type", DistributedType.FSDP), ("device", self.device)):
                PartialState._shared_state[key] = value

    AcceleratorState.__init__ = init


def patch_prepare_model() -> None:
    """Before accelerate wraps a model in FSDP, broadcast process 0's weights and buffers to every process: what the
    shipped FSDP configs' `fsdp_sync_module_states: true` does on GPUs. On a CPU it cannot: accelerate's plugin
    refuses it without an accelerator, and torch's FSDP1 refuses it for CPU modules. So the launch passes
    `--fsdp_sync_module_states false` and this stands in for it. It matters: each process seeds differently
    (set_seed(device_specific=True)), so LoRA's random initialisation differs per process, and the shards would come
    from different initialisations (DDP broadcasts process 0's weights when it wraps a model)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    original = Accelerator.prepare_model

    def prepare_model(self, model, *args, **kwargs):
        if self.distributed_type == DistributedType.FSDP:
            with torch.no_grad():
                for tensor in [*model.parameters(), *model.buffers()]:
                    torch.distributed.broadcast(tensor.data, src=0)
        return original(self, model, *args, **kwargs)

    Accelerator.prepare_model = prepare_model


def count_forwards(folder: str) -> None:
    """Count this process's forwards of the SD3 transformer (the top module: blocks' own calls are not counted); at
    exit write the count to FOLDER/forwards-RANK.txt. Under FSDP every forward is a collective, so every process
    must run the same number."""
    import atexit
    from pathlib import Path

    from diffusers import SD3Transformer2DModel

    calls = [0]
    original = SD3Transformer2DModel.forward

    def forward(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    SD3Transformer2DModel.forward = forward
    path = Path(folder) / f"forwards-{os.environ['RANK']}.txt"
    atexit.register(lambda: path.write_text(str(calls[0])))


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        raise SystemExit("tests.fsdp_cpu: start it with `accelerate launch --use_fsdp` (or --config_file of an FSDP "
                         "config)")
    patch_accelerate_state()
    patch_prepare_model()
    if os.environ.get("AIF_TEST_FORWARDS"):
        count_forwards(os.environ["AIF_TEST_FORWARDS"])
    if os.environ.get("AIF_TEST_HANG_S"):  # a collective one process never joins: print where each one waits
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["AIF_TEST_HANG_S"]), exit=True)
    from aifeedback.cli import main

    main()
