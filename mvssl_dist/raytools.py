"""Starting or joining Ray the same way in every stage."""

from __future__ import annotations

import os


def joins_cluster(address: str | None = None) -> bool:
    """Whether ``init_ray(address)`` joins a running cluster (which may autoscale) rather than
    starting this machine's own Ray (whose resources are all it will ever have)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as set inside ``ray job submit``); else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if joins_cluster(address):
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always our own instance, never a stray cluster left on this machine
        ray.init(
            address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False
        )
