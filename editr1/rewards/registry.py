"""Rewards by name. A reward module registers itself with `@register_reward("name")`; every module of
this package is imported on first lookup, so adding a reward is one new file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from editr1.errors import EditR1Error
from editr1.rewards.base import Reward

_REWARDS: dict[str, Callable[..., Reward]] = {}
_RESUME_SAFE: dict[str, frozenset[str]] = {}


def register_reward(name: str, resume_safe_options: tuple[str, ...] = ()) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """`resume_safe_options`: options that change how scores are obtained, never their values (an
    endpoint, retries, a batch size): a resumed training run may change them."""

    def decorate(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        _REWARDS[name] = factory
        _RESUME_SAFE[name] = frozenset(resume_safe_options)
        return factory

    return decorate


def resume_safe_options(name: str) -> frozenset[str]:
    _import_all()
    return _RESUME_SAFE.get(name, frozenset())


def _import_all() -> None:
    import editr1.rewards as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def available_rewards() -> list[str]:
    _import_all()
    return sorted(_REWARDS)


def build_reward(name: str, options: dict[str, Any] | None = None) -> Reward:
    _import_all()
    if name not in _REWARDS:
        raise EditR1Error(f"reward.name: unknown reward {name!r}; available: {', '.join(sorted(_REWARDS))}")
    try:
        return _REWARDS[name](**(options or {}))
    except TypeError as error:
        raise EditR1Error(f"reward.options for {name!r}: {error}") from error
