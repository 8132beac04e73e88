"""Helpers for the training tests: config overrides for a seconds-long NFT run on the tiny preset."""

from __future__ import annotations

from editr1.tasks.shapes import SHIPPED_BASE


def tiny_nft_overrides(data, out, iterations=3):
    """A seconds-long NFT run from the shipped tiny base (it edits, so rewards vary): 2 groups x 4 edits."""
    return [
        f"model.path={SHIPPED_BASE}",
        f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"output_dir={out}",
        f"iterations={iterations}", "rollout.groups_per_iteration=2", "rollout.group_size=4", "rollout.steps=3",
        "eval.samples=8", "eval.every=2", "eval.steps=3", "logging.grid_every=2", "logging.checkpoint_every=2",
        "model.lora.rank=4", "model.lora.alpha=8", "logging.progress=false", "logging.tensorboard=false",
        "optim.lr=1e-3", "optim.micro_batch=4",
    ]
