"""One small module per SSL method, behind a registry. Every module here is imported, so a new
method registers itself by existing."""

import importlib
import pkgutil

from mvssl_dist.methods.base import Network, ReleaseLayoutError, SSLMethod
from mvssl_dist.methods.registry import ALIASES, METHODS, build_method, canonical_name, check_options, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALIASES",
    "METHODS",
    "Network",
    "ReleaseLayoutError",
    "SSLMethod",
    "build_method",
    "canonical_name",
    "check_options",
    "register",
]
