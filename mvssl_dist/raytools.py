"""Starting or joining Ray the same way in every stage."""

from __future__ import annotations

import os
import re
import socket


def joins_cluster(address: str | None = None) -> bool:
    """Whether ``init_ray(address)`` joins a running cluster (which may autoscale) rather than
    starting this machine's own Ray (whose resources are all it will ever have)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


class RayAddressError(RuntimeError):
    """Nothing answers at the Ray address given; one line."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) where nothing listens: ``ray.init`` would
    retry for minutes before failing. ``auto``, ``local`` and other forms are left to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([\w.:-]+?)\]?:(\d+)", address.strip())
    if not match:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout_s).close()
    except OSError as err:
        raise RayAddressError(
            f"Ray address {address}: nothing answers there ({err.strerror or err}); is the cluster up? "
            "(`ray start --head` prints its address)"
        ) from None


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as set inside ``ray job submit``); else start a local Ray.

    ``num_gpus``: the local Ray's GPUs when given (else Ray counts them itself).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always our own instance, never a stray cluster left on this machine
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
        )


def gpus_short(need: float, address: str | None = None) -> float | None:
    """The GPUs Ray has when fewer than ``need`` (``None`` when enough, or none needed).

    Asks the running Ray, joining ``address`` if need be; before this machine's own Ray is up,
    counts the GPUs torch sees instead of starting Ray only to ask.
    """
    import ray

    if need <= 0:
        return None
    if joins_cluster(address) or ray.is_initialized():
        init_ray(address)
        have = float(ray.cluster_resources().get("GPU", 0))
    else:
        import torch

        have = float(torch.cuda.device_count())
    return have if have < need else None
