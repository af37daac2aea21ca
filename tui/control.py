"""Writing from the TUI: commands to the agent and exports, both outside the UI thread.

The app reads through read-only stores; a command goes through a short-lived writable ``Store`` (the agent
acknowledges it when it next polls), and an export runs ``soar export`` as a subprocess so that torch is
never loaded into the TUI process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from soar_agent.store import COMMANDS, Store

# What each command does once the agent picks it up (shown on buttons and in the help screen).
COMMAND_HELP = {
    "pause": "pause at the next training step or evaluation batch (seconds)",
    "resume": "resume a paused run",
    "stop": "stop within seconds, after the current step (the unit it cuts short is redone on resume)",
    "promote": "promote the best student of the next completed step",
    "export": "export the best checkpoint (done by the agent)",
}
assert set(COMMAND_HELP) == set(COMMANDS)


def send_command(db_path: str | Path, run_id: int, command: str, args: dict | None = None) -> int:
    """Queue a command through a writable Store opened just for this (may wait on the agent's write lock:
    call it from a worker thread)."""
    with Store(db_path) as store:
        return store.send_command(run_id=run_id, command=command, args=args)


def export_argv(run_dir: str | Path, out: str | Path, checkpoint: int | str) -> list[str]:
    """The export subprocess: the real CLI, in a fresh interpreter (it loads torch; the TUI must not)."""
    return [sys.executable, "-m", "soar_agent.cli", "export", str(run_dir), "--out", str(out),
            "--checkpoint", str(checkpoint)]
