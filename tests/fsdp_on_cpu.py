"""`editr1` under accelerate's FSDP on the CPU, for the tests: `accelerate launch --config_file
configs/accelerate/fsdp_1node.yaml tests/fsdp_on_cpu.py train ...` with ACCELERATE_USE_CPU=1.

accelerate (1.15) takes the FSDP path only for GPU-like devices: on the CPU, `AcceleratorState` keeps
`MULTI_CPU` and the model is wrapped in DDP, unsharded. This script changes that one decision, and
only when the launch asked for FSDP: the launcher's settings from the shipped config, accelerate's FSDP2
plugin, `Accelerator.prepare` (`fsdp2_prepare_model`) and torch's `fully_shard` then run as they would
on GPUs, over gloo.
"""

import sys

from accelerate import state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP


state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from editr1.cli.main import main

    sys.exit(main(sys.argv[1:]))
