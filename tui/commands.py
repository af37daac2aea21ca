"""The Control tab: pause, resume, stop, promote now, export, sent to the agent through the commands table,
and their acknowledgements as the agent polls (every few seconds while it works; a command sent while no
agent was attached is dropped by the next session, and shown as dropped)."""

from __future__ import annotations

import sqlite3

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, DataTable, Static

from soar_agent.store import StoreError
from tui import control, fmt
from tui.queries import ATTACHED_WITHIN_S, Overview
from tui.tab import TabBody

KEYS = {"pause": "p", "resume": "u", "stop": "s", "promote": "m", "export": "x"}
LABELS = {"pause": "Pause", "resume": "Resume", "stop": "Stop", "promote": "Promote now", "export": "Export"}


def agent_line(o: Overview | None) -> str:
    if o is None:
        return "reading the run…"
    run = f"run {escape(o.run['name'])} · {o.run['status']} · phase {o.phase}"
    if o.attached:
        return f"[green]agent attached[/] (heartbeat {fmt.duration(o.heartbeat_age_s)} ago) · {run}"
    seen = "never seen" if o.heartbeat_age_s is None else f"last heartbeat {fmt.duration(o.heartbeat_age_s)} ago"
    return (f"[yellow]no agent attached[/] ({seen}; live means < {ATTACHED_WITHIN_S:.0f}s): a command sent now is"
            f" dropped by the next session (send it again once an agent runs) · {run}")


class ControlTab(TabBody):
    DEFAULT_CSS = """
    ControlTab #agent { height: auto; padding: 0 1; }
    ControlTab #buttons { height: auto; }
    ControlTab #buttons Button { min-width: 8; margin: 0 1 0 0; }
    ControlTab #notice { height: auto; padding: 0 1; color: $text-accent; }
    ControlTab #commands { height: 1fr; }
    """
    BINDINGS = [Binding(KEYS[name], f"command('{name}')", LABELS[name]) for name in control.COMMAND_HELP]

    class Sent(Message):
        def __init__(self, command_id: int, command: str) -> None:
            super().__init__()
            self.command_id, self.command = command_id, command

    class SendFailed(Message):
        def __init__(self, command: str, error: str) -> None:
            super().__init__()
            self.command, self.error = command, error

    class RefreshRequested(Message):
        """Ask the screen to poll now (so an acknowledgement shows without waiting for the interval)."""

    def __init__(self, source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.waiting: dict[int, str] = {}  # commands sent from here, not yet acknowledged
        self._shown: list | None = None

    def compose(self) -> ComposeResult:
        yield Static(agent_line(None), id="agent")
        with Horizontal(id="buttons"):
            for name in control.COMMAND_HELP:
                yield Button(f"{LABELS[name]} ({KEYS[name]})", id=f"cmd-{name}", tooltip=control.COMMAND_HELP[name],
                             compact=True, variant="error" if name == "stop" else "default")
        yield Static("", id="notice")
        yield DataTable(id="commands", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#commands", DataTable)
        for label, width in (("id", 4), ("command", 8), ("sent", 8), ("acked", 8), ("agent's answer", 40)):
            table.add_column(label, width=width)

    def focus_main(self) -> None:
        self.query_one("#cmd-pause").focus()

    # -- sending ---------------------------------------------------------------------------------

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        if event.button.id and event.button.id.startswith("cmd-"):
            self.action_command(event.button.id.removeprefix("cmd-"))

    def action_command(self, name: str) -> None:
        self.query_one("#notice", Static).update(f"sending {name}…")
        self.send(name)

    @work(thread=True, group="send-command")
    def send(self, name: str) -> None:
        args = {"checkpoint": "best"} if name == "export" else None
        try:
            command_id = control.send_command(self.source.db_path, self.source.run_id, name, args)
        except (StoreError, sqlite3.Error) as error:
            self.post_message(self.SendFailed(name, str(error)))
            return
        self.post_message(self.Sent(command_id, name))

    @on(Sent)
    def sent(self, message: Sent) -> None:
        self.waiting[message.command_id] = message.command
        if self.overview is not None and self.overview.attached:
            text = f"{message.command} sent (#{message.command_id}): waiting for the agent to pick it up…"
            self.notify(text, title="Command")
        else:
            text = (f"no agent attached: command queued ({message.command} #{message.command_id}); the next session"
                    " drops it as sent before it started: send it again once an agent runs")
            self.notify(text, title="Command", severity="warning")
        self.query_one("#notice", Static).update(text)
        self.post_message(self.RefreshRequested())

    @on(SendFailed)
    def send_failed(self, message: SendFailed) -> None:
        text = f"could not send {message.command}: {message.error}"
        self.query_one("#notice", Static).update(escape(text))
        self.notify(text, title="Command", severity="error", markup=False)

    # -- acknowledgements ------------------------------------------------------------------------

    def watch_overview(self, o: Overview | None) -> None:
        if o is None:
            return
        self.query_one("#agent", Static).update(agent_line(o))
        shown = [(c["id"], c["acked_at"]) for c in o.commands]
        if shown != self._shown:  # rebuild only on change: the cursor stays put between polls
            self._shown = shown
            self._fill(o.commands)
        for c in o.commands:
            if c["id"] in self.waiting and c["acked_at"]:
                del self.waiting[c["id"]]
                text = f"agent acknowledged {c['command']} (#{c['id']}): {c['ack_message']}"
                self.query_one("#notice", Static).update(escape(text))
                self.notify(text, title="Command", markup=False)

    def _fill(self, commands: list[dict]) -> None:
        table = self.query_one("#commands", DataTable)
        table.clear()
        for c in reversed(commands):
            table.add_row(c["id"], c["command"], fmt.clock_time(c["created_at"]),
                          ("dropped" if (c["ack_message"] or "").startswith("dropped:") else
                           fmt.clock_time(c["acked_at"])) if c["acked_at"] else "pending",
                          fmt.cell(c["ack_message"] or ""), key=str(c["id"]))
