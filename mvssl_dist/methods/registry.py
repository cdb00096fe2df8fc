"""Methods registered by name. Adding a method means adding one module in this package."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

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


def check_options(name: str, options: Mapping) -> dict:
    """``options`` checked against the method's constructor, with numbers as its defaults' types.

    Raises ``ValueError`` naming the option (``method.options.tau: ...``) for a name the method
    does not take or a value of the wrong type, before anything is built or started.
    """
    cls = METHODS[canonical_name(name)]
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    checked = {}
    for key, value in options.items():
        field = f"method.options.{key}"
        if key not in params:
            raise ValueError(f"{field}: not an option of {cls.name} (options: {', '.join(params) or 'none'})")
        checked[key] = option_value(field, value, params[key].default)
    return checked


def option_value(field: str, value, default):
    """``value`` as the type of ``default``: a number for a float, an integer for an int, a tuple of
    integers for a tuple of widths (kept a list, as the config is YAML; ``None``: the method's own)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{field} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{field} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field} must be an integer, got {value!r}")
        return value
    if isinstance(default, tuple) or default is None:
        if value is None and default is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise ValueError(f"{field} must be a list of positive integers, got {value!r}")
        return list(value)
    return value
