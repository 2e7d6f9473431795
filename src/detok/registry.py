"""The one registry of detok: every buildable component (tokenizer, generator, dataset, ...) by kind and name.

    @register("tokenizer", "detok_bb")
    def detok_bb(**overrides) -> DeTok: ...

    build("tokenizer", "detok_bb", image_size=64)
    names("tokenizer")  # sorted list, used for CLI choices and registry-driven tests
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: record `fn` as the builder of `kind/name`. Names are lowercase, without slashes."""
    if not _NAME.match(name):
        raise ValueError(f"registry name {name!r} must be lowercase [a-z0-9_-.] without slashes")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not fn:
            raise KeyError(f"{kind}/{name} is registered twice")
        table[name] = fn
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the model packages fills the registry through their decorators.
    import detok.generators  # noqa: F401
    import detok.tokenizers  # noqa: F401


def names(kind: str) -> list[str]:
    """All registered names of a kind, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY.get(kind, {}))


def get(kind: str, name: str) -> Callable[..., Any]:
    """The builder registered as `kind/name`; a KeyError lists the valid names."""
    _ensure_loaded()
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table)) or '(none)'}")
    return table[name]


def build(kind: str, name: str, **cfg: Any) -> Any:
    """Build `kind/name` with keyword overrides of its preset."""
    return get(kind, name)(**cfg)
