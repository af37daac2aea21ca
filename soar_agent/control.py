"""A run's control while it works: signals (Ctrl-C, SIGTERM), the heartbeat inside a unit of work, and the
TUI's commands (pause, resume, stop, promote, export), each acknowledged in the store."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soar_agent.agent import Agent

HEARTBEAT_S = 10.0  # inside a unit; status.STALE_S and the TUI's ATTACHED_WITHIN_S allow for gaps


class UnitStopped(Exception):
    """A stop command read inside a unit of work (beat): the unit ends after its current step and is
    redone on resume; `Agent.run` records the stop."""


def install_signal_handlers(agent: Agent) -> None:
    """SIGINT / SIGTERM: the first stops the run after the current unit; the second stops it at once
    (KeyboardInterrupt at the main thread's next Python instruction, whatever the unit: `run` then marks
    the run stopped, and as every store write is one transaction nothing is half-written; the unit in
    progress is redone on resume); a third gets the default action, which ends the process even inside
    native code that has not returned to Python."""
    received: list[int] = []

    def request_stop(signum, frame):
        received.append(signum)
        if len(received) > 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            raise KeyboardInterrupt
        agent.stop_reason = f"{signal.Signals(signum).name} received: stopping after the current unit"
        agent.log(agent.stop_reason + " (Ctrl-C again: stop at once, the unit in progress is redone on resume;"
                  f" resume with `soar run --run-dir {agent.paths.root}`)")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)


def beat(agent: Agent) -> None:
    """Inside a unit of work (each training step, evaluation batch, teacher sampling round, teacher update
    micro-batch, decoded token): the run's heartbeat and, in a `soar run` session, the TUI's commands, at most
    every HEARTBEAT_S, so that they are answered within seconds rather than after a unit of minutes. A pause
    waits here, at the step boundary; a stop ends the unit (UnitStopped: it is redone on resume, as after a
    second Ctrl-C; the final training keeps its chain's last training)."""
    if time.monotonic() - agent._last_beat < HEARTBEAT_S:
        return
    agent._last_beat = time.monotonic()
    agent.store.heartbeat(agent.run_id)
    if agent.session_started is None:  # outside `soar run` (eval-pq): the heartbeat alone
        return
    obey_commands(agent, inside_unit=True)
    while agent.paused and not agent.stop_reason:
        time.sleep(1.0)
        agent.store.heartbeat(agent.run_id)
        obey_commands(agent, inside_unit=True)
    agent._last_beat = time.monotonic()
    if agent._stop_in_unit:
        raise UnitStopped(agent.stop_reason)


def poll_commands(agent: Agent) -> None:
    """Commands from the TUI (or `soar` scripts), each acknowledged; pause blocks here."""
    while True:
        agent.store.heartbeat(agent.run_id)
        obey_commands(agent)
        if not agent.paused or agent.stop_reason:
            return
        time.sleep(1.0)


def obey_commands(agent: Agent, inside_unit: bool = False) -> None:
    """Each pending command, acknowledged with what the agent does. One sent before this session started
    is dropped: a stop queued while no agent was attached would end the resume at once (and export), a
    pause hold it; the user sends it again to mean it now."""
    for command in agent.store.pending_commands(agent.run_id):
        name = command["command"]
        if agent.session_started is not None and command["created_at"] < agent.session_started:
            sent = local_time(command["created_at"])
            note = f"ignored a {name} sent at {sent} before this session started; send it again to {name}"
            agent.store.ack_command(command["id"], f"dropped: sent at {sent}, before this session started;"
                                                  f" send it again to {name}")
            agent.store.log_event(run_id=agent.run_id, level="warning", kind="command-dropped", message=note,
                                 data={"command": name, "command_id": command["id"]})
            agent.log(note)
            continue
        if name == "pause":
            agent.paused = True
            message = "pausing at the next step" if inside_unit else "paused after the current unit"
        elif name == "resume":
            agent.paused, message = False, "resumed"
        elif name == "stop":
            agent.stop_reason = "stop command received"
            message = "stopping after the current unit"
            if inside_unit:
                agent._stop_in_unit = True
                message = "stopping after the current step; the unit it interrupts is redone on resume"
        elif name == "promote":
            agent.force_promotion, message = True, "the best student of the next completed step will be promoted"
        else:  # export
            try:
                out = agent.export(command["args"].get("checkpoint", "best"), command["args"].get("out"))
                message = f"exported to {out}"
            except ValueError as error:  # a refused --out or unknown checkpoint must not end the run
                message = f"export failed: {error}"
        agent.store.ack_command(command["id"], message)
        agent.store.log_event(run_id=agent.run_id, level="info", kind=f"command-{name}", message=message)
        if inside_unit:
            agent.log(f"{name}: {message}")


def store_time() -> str:
    """Now, as the store writes times (UTC ISO with milliseconds): comparable with its rows' as text."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def local_time(stored: str) -> str:
    """A stored (UTC ISO) time as a local date and clock time, for messages."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stored).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return stored
