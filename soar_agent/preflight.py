"""What a `soar run` session needs from this machine and its settings, checked before any work starts.

A new run is checked before its run directory is created (agent.check_run_config: the machine first, the
mode's domain once its data files have loaded, so a bad file is named first), a resumed one with the
settings this session goes on with (the stored config and the session's --set model.device / model.engine /
run.workers / run.ray_address) before it does anything: each problem is one ConfigError line naming the
field, where it used to surface after the run was created and minutes of work (a missing vLLM, a CUDA device
on a machine without one, a Ray cluster that does not answer), or as a traceback at the first teacher item.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.parse

from soar_agent.config import ConfigError, RunConfig

RAY_CONNECT_TIMEOUT_S = 3.0  # a TCP connect to the cluster's address: a live head answers in milliseconds
RAY_DEFAULT_PORTS = {"": 6379, "ray": 10001}  # the GCS port of `ray start --head`; Ray Client's (ray://)
TEACHER_MODES = ("soar", "intrinsic")  # the modes whose students train on problems the teacher writes


def check_session(config: RunConfig) -> None:
    """Every check below (a resume's); ConfigError (one line naming the field) at the first that fails."""
    check_machine(config)
    check_teacher_items(config.run.mode, config.domain.name)


def check_machine(config: RunConfig) -> None:
    """The engine, the device and the Ray cluster the config names (a new run's first check)."""
    check_engine(config.model.engine)
    check_device(config.model.device)
    check_cluster(config.run.workers, config.run.ray_address)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_engine(engine: str) -> None:
    """model.engine = vllm needs vLLM installed (the gpu extra) and a CUDA GPU."""
    if engine != "vllm":
        return
    if not _installed("vllm"):
        raise ConfigError("model.engine = 'vllm': vLLM is not installed (pip install 'soar-agent[gpu]');"
                          " use model.engine = hf (on a resume: --set model.engine=hf)")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("model.engine = 'vllm': vLLM needs a CUDA GPU and torch sees none on this machine;"
                          " use model.engine = hf (on a resume: --set model.engine=hf)")


def check_device(device: str) -> None:
    """model.device = cuda / cuda:N needs that GPU on this machine (auto and cpu always work)."""
    if device in ("auto", "cpu"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"model.device = {device!r}: torch sees no CUDA GPU on this machine; use model.device ="
                          " auto or cpu (on a resume: --set model.device=cpu)")
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"model.device = {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to"
                          f" cuda:{count - 1} (on a resume: --set model.device=cuda:0)")


def ray_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: host:port, ray://host:port (Ray Client), a host alone (Ray's default
    port); ValueError for anything else."""
    scheme = address.split("://", 1)[0] if "://" in address else ""
    if scheme not in RAY_DEFAULT_PORTS:
        raise ValueError(f"expected host:port or ray://host:port, got scheme {scheme!r}")
    parts = urllib.parse.urlsplit(address if scheme else f"//{address}")
    if not parts.hostname or parts.path not in ("", "/"):
        raise ValueError("expected host:port or ray://host:port")
    return parts.hostname, parts.port or RAY_DEFAULT_PORTS[scheme]  # .port: ValueError when not a port number


def check_cluster(workers: int, address: str) -> None:
    """run.workers > 1: the Ray cluster it joins (run.ray_address, else RAY_ADDRESS; "auto" and a local
    instance are left to Ray) must answer a TCP connect within RAY_CONNECT_TIMEOUT_S, and Ray must be
    installed."""
    if workers <= 1:
        return
    field = "run.ray_address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address and address not in ("auto", "local"):
        try:
            host, port = ray_endpoint(address)
        except ValueError as error:
            raise ConfigError(f"{field} = {address[:200]!r}: not a Ray address ({error})") from None
        try:
            socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as error:
            reason = "timed out" if isinstance(error, socket.timeout) else (error.strerror or str(error))
            raise ConfigError(f"{field} = {address[:200]!r}: no Ray cluster answers at {host}:{port} ({reason});"
                              f" start one (ray start --head) or set run.workers = 1 (run.workers ="
                              f" {workers})") from None
    if not _installed("ray"):
        raise ConfigError(f"run.workers = {workers} needs Ray: pip install 'soar-agent[ray]' (or set run.workers = 1)")


def check_teacher_items(mode: str, domain_name: str) -> None:
    """A domain whose problems the teacher's item (<question>...</question><answer>...</answer>) cannot make
    scorable says why in TEACHER_ITEMS_UNSCORABLE (code: a solution is scored by its problem's tests, and an
    item carries none): the modes where students train on the teacher's problems are refused there."""
    if mode not in TEACHER_MODES:
        return
    from soar_agent.tasks import get_domain

    reason = getattr(get_domain(domain_name), "TEACHER_ITEMS_UNSCORABLE", None)
    if reason:
        raise ConfigError(f"run.mode = {mode!r} with domain.name = {domain_name!r}: {reason}; use --mode hard-only"
                          " (or --mode curated with a domain.curated file) with this domain")
