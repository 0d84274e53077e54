"""Connecting to Ray: an existing cluster, or an embedded single-machine one bound to loopback."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def connect(address: str | None, min_cpus: int = 1) -> None:
    """Join the cluster at ``address``, or start an embedded local one when it is None.

    The embedded cluster listens on 127.0.0.1 only, has no dashboard, keeps Ray's token
    authentication on, and offers at least ``min_cpus`` logical CPUs (one per stage).
    """
    if address is None:
        # Must be set before ray is imported: makes Ray use the loopback address for its nodes.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address is None:
        cpus = max(os.cpu_count() or 1, min_cpus)
        ray.init(address="local", include_dashboard=False, num_cpus=cpus, log_to_driver=False,
                 logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


def disconnect() -> None:
    """Stop an embedded cluster, or detach from a remote one."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
