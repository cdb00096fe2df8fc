"""Methods registered by name. Adding a method means adding one module in this package."""

from __future__ import annotations

from collections.abc import Callable

METHODS: dict[str, type] = {}
ALIASES: dict[str, str] = {}


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        METHODS[name] = cls
        ALIASES.update({alias: name for alias in aliases})
        return cls

    return wrap


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in METHODS:
        known = ", ".join(sorted([*METHODS, *ALIASES]))
        raise ValueError(f"unknown method '{name}' (known: {known})")
    return name


def build_method(name: str, **options):
    """Instantiate a registered method by name (aliases accepted) with its options."""
    return METHODS[canonical_name(name)](**options)
