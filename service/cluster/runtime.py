"""Connecting to Ray: an existing cluster, or an embedded single-machine one bound to loopback."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)


def pipewave_home() -> Path:
    """The state directory: ``$PIPEWAVE_HOME``, else ``~/.pipewave``."""
    return Path(os.environ.get("PIPEWAVE_HOME") or Path.home() / ".pipewave").expanduser()


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
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a cluster address nothing listens on (ray.init would retry for minutes)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConnectionError(f"not a cluster address (expected HOST:PORT): {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err.strerror or err})") from None


def disconnect() -> None:
    """Stop an embedded cluster, or detach from a remote one."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
