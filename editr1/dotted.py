"""Lazy registries: a built-in name maps to a dotted path `package.module:attribute`, imported on first
use; any other name is itself taken as a dotted path, so a model family or reward defined outside
editr1 is usable from a config as it is (see docs/extending.md)."""

from __future__ import annotations

import importlib
from typing import Any

from editr1.errors import EditR1Error


def resolve(name: str, registry: dict[str, str], field: str, what: str) -> Any:
    """The object `registry[name]` names, or, for a name not in `registry`, the object at the dotted path
    `name`. Every failure is a one-line `EditR1Error` naming the config `field` and what failed."""
    module_name, colon, attribute = registry.get(name, name).partition(":")
    if not (module_name and colon and attribute):
        raise EditR1Error(f"{field}: unknown {what} {name!r}; known: {sorted(registry)}, "
                          "or the dotted path package.module:Name of one defined elsewhere")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EditR1Error(f"{field}: {name!r}: cannot import {module_name} ({error})") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise EditR1Error(f"{field}: {name!r}: module {module_name} has no {attribute!r}") from None
