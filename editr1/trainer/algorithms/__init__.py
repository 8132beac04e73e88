"""RL algorithms, registered by name (`rl.algorithm`). An algorithm is how its rollouts are sampled, what
they keep, and the loss of its update; the trainer (editr1.trainer.rl_trainer) runs any of them. A new one is a
file here (a subclass of `base.Algorithm`) and a line in `ALGORITHMS`; one defined elsewhere is named by its
dotted path `package.module:Class`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from editr1.dotted import resolve
from editr1.errors import EditR1Error

if TYPE_CHECKING:
    from editr1.config import TrainConfig
    from editr1.trainer.algorithms.base import Algorithm

ALGORITHMS: dict[str, str] = {
    "nft": "editr1.trainer.algorithms.nft:DiffusionNFT",
    "grpo": "editr1.trainer.algorithms.grpo:FlowGRPO",
}


def build_algorithm(config: "TrainConfig") -> "Algorithm":
    """The algorithm `rl.algorithm` names, with its settings checked (a one-line error for a bad one)."""
    from editr1.trainer.algorithms.base import Algorithm

    cls = resolve(config.rl.algorithm, ALGORITHMS, "rl.algorithm", "algorithm")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise EditR1Error(f"rl.algorithm: {config.rl.algorithm!r} is not a subclass of "
                          "editr1.trainer.algorithms.base.Algorithm")
    algorithm = cls(config)
    algorithm.check()
    return algorithm
