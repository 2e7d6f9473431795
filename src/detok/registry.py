"""The one registry of detok: every buildable component by kind and name, grouped into families.

A *family* is one model design (l-DeTok, SiT, MAR, ...): it declares what it is, its small CPU recipe
(the run config `detok quickstart` and `detok bench tokenizer` train) and, for generators, what its
sampling steps mean. Its *members* are the sizes (`sit_tiny`, `sit_b`, ...), each a builder function:

    register_family(Family("generator", "sit", "SiT: ...", recipe="quickstart_sit", sampling=Sampling(...)))

    @register("generator", "sit_b", family="sit")
    def sit_b(**overrides) -> SiT: ...

    build("generator", "sit_b", latent_shape=(16, 16, 16))
    names("generator")                 # every member, sorted: CLI choices, registry-driven tests
    families("generator")              # every family, in registration order: bench, table, quickstart
    family_of("generator", "sit_b")    # -> the Family of a member

Every list of models in detok (CLI choices and `--help`, the bench and its table, the quickstart, the
benchmarks, the contract tests) comes from here, so a new family is one file that registers itself.
The registry imports nothing of detok at module level; the built-in families are imported on the first
lookup (`BUILTIN_MODULES`), the way a plugin registry discovers its plugins, and a family defined
anywhere else (a user's module, a test) registers the same way.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}
_FAMILIES: dict[str, dict[str, Family]] = {}
_MEMBER_FAMILY: dict[tuple[str, str], str] = {}
_ALIASES: dict[tuple[str, str], str] = {}  # deprecated spelling -> current name
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")

# Modules whose import registers detok's own families (discovered lazily: see the module docstring).
BUILTIN_MODULES = ("detok.tokenizers", "detok.generators", "detok.multimodal")
_loaded = False


@dataclass(frozen=True)
class Sampling:
    """What a generator family's `sample(..., steps=, head_steps=)` arguments count.

    `steps` is always the sampler's outer loop: one network evaluation of the whole latent per step for
    diffusion / flow models, one unmasking iteration for MAR, one token for autoregressive models.
    `head_steps` is the per-token diffusion head's denoising steps ("" = the family has no such head).
    """

    steps: str  # e.g. "Euler ODE steps (NFE - 1)"
    default_steps: str  # the paper's value, as the config spells it
    head_steps: str = ""  # e.g. "DDPM steps of the per-token DiffLoss head (respacing)"
    default_head_steps: str = ""
    fixed_steps: bool = False  # True: steps is set by the latent (AR: one per token) and cannot be chosen


@dataclass(frozen=True)
class Family:
    """One model design and everything outside its file needs to know about it."""

    kind: str  # "tokenizer" | "generator"
    name: str  # lowercase, e.g. "sit"
    summary: str  # one line for --help and tables
    recipe: str | dict[str, Any] = ""  # small CPU run recipe: a preset name (configs/<name>.yaml) or a mapping
    sampling: Sampling | None = None  # generators only
    paper: str = ""  # arXiv id or citation
    config: type | None = None  # the dataclass of a member's settings (for --help and the contract tests)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts (e.g. a tokenizer's run hooks)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"registry name {name!r} must be lowercase [a-z0-9_-.] without slashes")


def register_family(family: Family) -> Family:
    """Record a family (idempotent for an equal declaration); returns it."""
    _check_name(family.name)
    table = _FAMILIES.setdefault(family.kind, {})
    old = table.get(family.name)
    if old is not None and old != family:
        raise KeyError(f"{family.kind} family {family.name} is registered twice, differently")
    table[family.name] = family
    return family


def register(kind: str, name: str, family: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: record `fn` as the builder of `kind/name`, a member of `family` (registered before)."""
    _check_name(name)
    if family is not None and family not in _FAMILIES.get(kind, {}):
        raise KeyError(f"{kind}/{name}: family {family!r} is not registered; call register_family first")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not fn:
            raise KeyError(f"{kind}/{name} is registered twice")
        table[name] = fn
        if family is not None:
            _MEMBER_FAMILY[(kind, name)] = family
        return fn

    return wrap


def alias(kind: str, old: str, new: str) -> None:
    """Accept the deprecated name `old` for `kind/new` (with a DeprecationWarning) for one release."""
    _ALIASES[(kind, old)] = new


def canonical(kind: str, name: str) -> str:
    """`name`, or the current name of a deprecated spelling (warning once per call site)."""
    new = _ALIASES.get((kind, name))
    if new is None:
        return name
    warnings.warn(f"{kind} name {name!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3)
    return new


def unregister(kind: str, name: str) -> None:
    """Remove a member or a whole family (with its members); for tests that register their own."""
    _REGISTRY.get(kind, {}).pop(name, None)
    _MEMBER_FAMILY.pop((kind, name), None)
    if name in _FAMILIES.get(kind, {}):
        del _FAMILIES[kind][name]
        for member in [m for (k, m), f in _MEMBER_FAMILY.items() if k == kind and f == name]:
            _REGISTRY[kind].pop(member, None)
            del _MEMBER_FAMILY[(kind, member)]


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def names(kind: str) -> list[str]:
    """All registered member names of a kind, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY.get(kind, {}))


def get(kind: str, name: str) -> Callable[..., Any]:
    """The builder registered as `kind/name`; a KeyError lists the valid names."""
    _ensure_loaded()
    table = _REGISTRY.get(kind, {})
    name = canonical(kind, name)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table)) or '(none)'}")
    return table[name]


def build(kind: str, name: str, **cfg: Any) -> Any:
    """Build `kind/name` with keyword overrides of its preset."""
    return get(kind, name)(**cfg)


def families(kind: str) -> list[Family]:
    """Every family of a kind, in registration order (the order of tables and plots)."""
    _ensure_loaded()
    return list(_FAMILIES.get(kind, {}).values())


def family(kind: str, name: str) -> Family:
    """The family `kind/name`; a KeyError lists the valid ones."""
    _ensure_loaded()
    table = _FAMILIES.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} family {name!r}; choose one of: {', '.join(table) or '(none)'}")
    return table[name]


def family_of(kind: str, member: str) -> Family:
    """The family a registered member belongs to."""
    get(kind, member)  # a clear error for an unknown member
    fam = _MEMBER_FAMILY.get((kind, canonical(kind, member)))
    if fam is None:
        raise KeyError(f"{kind} {member!r} belongs to no family")
    return _FAMILIES[kind][fam]


def members(kind: str, family_name: str) -> list[str]:
    """The registered members of a family, sorted."""
    family(kind, family_name)
    return sorted(m for (k, m), f in _MEMBER_FAMILY.items() if k == kind and f == family_name)


def tiny_members(kind: str) -> list[str]:
    """Every `*_tiny` member of a kind: what the registry-driven contract tests run."""
    return [n for n in names(kind) if n.endswith("_tiny")]
