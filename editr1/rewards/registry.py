"""Rewards by name, imported on first use. `reward.name` takes a name of `REWARDS` or the dotted path
`package.module:Name` of a `Reward` class or factory defined anywhere (see docs/extending.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from editr1.dotted import resolve
from editr1.errors import EditR1Error
from editr1.rewards.base import Reward

REWARDS: dict[str, str] = {
    "shapes_verifier": "editr1.tasks.shapes.verifier:ShapesVerifier",
    "mllm": "editr1.rewards.mllm_judge:mllm_reward",
    "mllm_remote": "editr1.rewards.remote_judge:RemoteJudgeReward",
    "viescore": "editr1.eval.benchmarks.reward:VIEScoreReward",
}


def reward_factory(name: str, section: str = "reward") -> Callable[..., Reward]:
    """The class or factory of reward `name`, called with `<section>.options` as keyword arguments."""
    factory = resolve(name, REWARDS, f"{section}.name", "reward")
    if not callable(factory):
        raise EditR1Error(f"{section}.name: {name!r} is not a Reward class or factory")
    return factory


def resume_safe_options(name: str, section: str = "reward") -> frozenset[str]:
    """The options of reward `name` that a resumed run may change: its factory's `resume_safe_options`
    (options that change how scores are obtained, never their values: an endpoint, retries, a batch size)."""
    return frozenset(getattr(reward_factory(name, section), "resume_safe_options", ()))


def build_reward(name: str, options: dict[str, Any] | None = None, section: str = "reward") -> Reward:
    factory = reward_factory(name, section)
    try:
        return factory(**(options or {}))
    except TypeError as error:
        raise EditR1Error(f"{section}.options for {name!r}: {error}") from error
    except EditR1Error as error:
        # A reward names its own options as `reward.options.x`; say where this one is configured.
        message = str(error)
        if section != "reward" and message.startswith("reward.options"):
            raise EditR1Error(section + message[len("reward"):]) from error
        raise
