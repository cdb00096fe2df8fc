"""Methods registered by name. Adding a method means adding one module in this package."""

from __future__ import annotations

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
    """A method's registered name from its name or an alias, in any case, with ``-`` for ``_``
    (``SimCLR``, ``Barlow-Twins``)."""
    plain = name.strip().lower().replace("-", "_")
    plain = ALIASES.get(plain, plain)
    if plain not in METHODS:
        known = ", ".join(sorted(METHODS))
        aliases = ", ".join(f"{alias} = {target}" for alias, target in sorted(ALIASES.items()))
        raise ValueError(f"unknown method '{name}' (known: {known}; also {aliases})")
    return plain


def build_method(name: str, **options):
    """Instantiate a registered method by name (aliases accepted) with its options."""
    return METHODS[canonical_name(name)](**options)


def check_options(name: str, options: Mapping) -> dict:
    """``options`` checked against the method's constructor, numbers as its annotations say.

    Raises ``ConfigError`` (a ``ValueError``) naming the option (``method.options.tau: ...``) for a
    name the method does not take, a value of the wrong type, or one outside the method's
    ``option_bounds``, before anything is built or started.
    """
    from mvssl_dist.config import typed_options, within

    cls = METHODS[canonical_name(name)]
    checked = typed_options("method.options", cls.name, options, cls.__init__)
    for key, bounds in getattr(cls, "option_bounds", {}).items():
        if key in checked:
            within(f"method.options.{key}", checked[key], bounds)
    return checked
