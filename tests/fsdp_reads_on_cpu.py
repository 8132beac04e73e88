"""`fsdp_on_cpu.py` that also records what each process reads, for tests/test_fsdp_memory.py: the model folders
loaded with weights (every `from_pretrained` of diffusers and transformers) and the checkpoint tensors read on
resume (`TensorFile.read`, with the block asked for), one JSON line per call in `$EDITR1_TEST_READS/rank<N>.jsonl`.
"""

import json
import os
import sys
from pathlib import Path

import fsdp_on_cpu  # noqa: F401  (accelerate's FSDP on CPU processes)
from diffusers import ModelMixin
from transformers import PreTrainedModel

from editr1.trainer.checkpoint import TensorFile

LOG = Path(os.environ["EDITR1_TEST_READS"]) / f"rank{os.environ['RANK']}.jsonl"


def _record(**entry) -> None:
    with LOG.open("a") as log:
        log.write(json.dumps(entry) + "\n")


def _recording_from_pretrained(base):
    load = base.from_pretrained.__func__

    def from_pretrained(cls, path, *args, **kwargs):
        _record(kind="from_pretrained", cls=cls.__name__, path=str(path))
        return load(cls, path, *args, **kwargs)

    base.from_pretrained = classmethod(from_pretrained)


_read = TensorFile.read


def _recording_read(self, name, index=None):
    _record(kind="read", file=self.path.name, name=name, block=None if index is None else [[s.start, s.stop] for s in index])
    return _read(self, name, index)


_recording_from_pretrained(ModelMixin)
_recording_from_pretrained(PreTrainedModel)
TensorFile.read = _recording_read

if __name__ == "__main__":
    from editr1.cli.main import main

    sys.exit(main(sys.argv[1:]))
