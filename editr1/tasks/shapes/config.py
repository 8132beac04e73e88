"""Config of `editr1 judge distill` (:mod:`editr1.tasks.shapes.judge_distill`), loaded by `editr1.config.load_config`
like any config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from editr1.config import DataConfig, LoggingConfig, ModelConfig, register_bounds
from editr1.tasks.shapes import SHIPPED_BASE


@dataclass
class JudgeArchConfig:
    """Sizes of the tiny Qwen2.5-VL judge (`editr1.rewards.tiny_judge`)."""

    hidden: int = 128
    layers: int = 4
    vision_hidden: int = 64
    vision_depth: int = 2


@dataclass
class JudgeRolloutConfig:
    """Edits of the policy model to learn on: `count` per training sample with this sampler."""

    sampler: Literal["euler", "dpmpp_2m"] = "dpmpp_2m"
    steps: int = 6
    count: int = 4


@dataclass
class JudgeDistillConfig:
    """`editr1 judge distill`: teach a tiny MLLM judge to answer the shapes verifier's score."""

    seed: int = 0
    output_dir: str = "runs/judge"
    #: The editing model whose rollouts the judge learns to score (besides targets and corruptions).
    policy: ModelConfig = field(default_factory=lambda: ModelConfig(path=str(SHIPPED_BASE)))
    data: DataConfig = field(default_factory=DataConfig)
    rollouts: list[JudgeRolloutConfig] = field(
        default_factory=lambda: [JudgeRolloutConfig("dpmpp_2m", 6, 4), JudgeRolloutConfig("euler", 8, 2)]
    )
    corruptions_per_sample: int = 5
    #: `examples.npz` of an earlier run with the same data and rollout settings: skips building them.
    reuse_examples: str | None = field(default=None, metadata={"path": "always"})
    steps: int = 3000
    time_budget_s: float = 0.0
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    #: Weight of the auxiliary captioning loss (0: scoring only), and captions per step.
    caption_weight: float = 1.0
    caption_batch_size: int = 32
    #: Weight of the pairwise ranking loss between edits of one source (batches hold whole sources).
    ranking_weight: float = 1.0
    #: Held-out samples whose two policy rollouts form the agreement pairs.
    eval_pairs: int = 256
    #: Verifier scores closer than this make a "tie" pair.
    tie_margin: float = 0.05
    arch: JudgeArchConfig = field(default_factory=JudgeArchConfig)
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    logging: LoggingConfig = field(default_factory=LoggingConfig)


register_bounds("JudgeArchConfig", hidden=(16, None), layers=(1, None), vision_hidden=(16, None), vision_depth=(1, None))
register_bounds("JudgeRolloutConfig", steps=(1, None), count=(0, None))
register_bounds("JudgeDistillConfig", corruptions_per_sample=(1, None), steps=(1, None), time_budget_s=(0, None),
                batch_size=(1, None), lr=(0, None, True), warmup_steps=(0, None), weight_decay=(0, None),
                grad_clip=(0, None, True), eval_every=(0, None), eval_pairs=(0, None), tie_margin=(0, 1),
                caption_weight=(0, None), ranking_weight=(0, None), caption_batch_size=(1, None))
