"""The Checkpoints tab: the run's checkpoints with their evaluations; `e` exports the highlighted one by
running `soar export` as a subprocess (torch stays out of the TUI) behind a progress indicator."""

from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import datetime

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, ProgressBar, Static
from textual.worker import get_current_worker

from tui import fmt, queries
from tui.curricula import cursor_key, restore_cursor
from tui.queries import Overview, pass_keys
from tui.tab import TabBody


def headline(evaluations: list[dict]) -> str:
    """The newest hard-test figure of a checkpoint: pass@<largest k>."""
    hard = [e for e in evaluations if e["set_name"] == "hard-test"]
    if not hard:
        return "-"
    keys = pass_keys(hard[-1]["summary"])
    return f"{keys[-1]} {fmt.percent(hard[-1]['summary'][keys[-1]])}" if keys else "-"


def evaluation_lines(checkpoint: dict) -> str:
    lines = [f"[b]checkpoint {checkpoint['id']}[/b] · {checkpoint['role']} · {escape(checkpoint['path'])}"]
    for e in checkpoint["evaluations"]:
        s = e["summary"]
        figures = " ".join(f"{k} {fmt.percent(s[k])}" for k in (["greedy_acc"] if "greedy_acc" in s else []) + pass_keys(s))
        lines.append(f"{escape(e['set_name'])} @ step {e['teacher_step']}: {figures or '-'}")
    if not checkpoint["evaluations"]:
        lines.append("no evaluations of this checkpoint")
    return "\n".join(lines)


class CheckpointsTab(TabBody):
    DEFAULT_CSS = """
    CheckpointsTab #checkpoint-table { height: 1fr; }
    CheckpointsTab #detail { height: auto; max-height: 6; padding: 0 1; border-top: solid $primary-background; }
    CheckpointsTab #export-bar { height: auto; padding: 0 1; }
    CheckpointsTab #export-progress { display: none; width: auto; margin-right: 1; }
    CheckpointsTab.exporting #export-progress { display: block; }
    CheckpointsTab #export-status { width: 1fr; }
    """
    BINDINGS = [Binding("e", "export", "Export checkpoint")]

    class Loaded(Message):
        def __init__(self, rows: list[dict]) -> None:
            super().__init__()
            self.rows = rows

    class ExportProgress(Message):
        def __init__(self, seconds: float, line: str) -> None:
            super().__init__()
            self.seconds, self.line = seconds, line

    class ExportFinished(Message):
        def __init__(self, returncode: int, out: str, output: str) -> None:
            super().__init__()
            self.returncode, self.out, self.output = returncode, out, output

    def __init__(self, source, **kwargs) -> None:
        super().__init__(source, **kwargs)
        self.rows: dict[str, dict] = {}
        self._seen: object = None
        self.exporting = False

    def compose(self) -> ComposeResult:
        yield DataTable(id="checkpoint-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="detail")
        with Horizontal(id="export-bar"):
            yield ProgressBar(total=None, show_eta=False, id="export-progress")
            yield Static("e: export the highlighted checkpoint (soar export, in a subprocess)", id="export-status")

    def on_mount(self) -> None:
        table = self.query_one("#checkpoint-table", DataTable)
        for label in ("id", "role", "step", "status", "hard-test", "created"):
            table.add_column(label, key=label)

    def focus_main(self) -> None:
        self.query_one("#checkpoint-table").focus()

    def watch_overview(self, o: Overview | None) -> None:
        if o is not None and o.marks["checkpoints"] != self._seen:
            self._seen = o.marks["checkpoints"]
            self.load()

    @work(thread=True, exclusive=True, group="checkpoints")
    def load(self) -> None:
        with queries.open_reader(self.source.db_path) as store:
            rows = queries.checkpoints(store, self.source.run_id)
        self.post_message(self.Loaded(rows))

    @on(Loaded)
    def show(self, message: Loaded) -> None:
        table = self.query_one("#checkpoint-table", DataTable)
        keep = cursor_key(table)
        table.clear()
        self.rows = {str(r["id"]): r for r in message.rows}
        for r in message.rows:
            table.add_row(r["id"], r["role"], r["teacher_step"] if r["teacher_step"] is not None else "-", r["status"],
                          headline(r["evaluations"]), fmt.clock_time(r["created_at"]), key=str(r["id"]))
        restore_cursor(table, keep)
        self._show_detail()

    @on(DataTable.RowHighlighted, "#checkpoint-table")
    def _show_detail(self) -> None:
        key = cursor_key(self.query_one("#checkpoint-table", DataTable))
        self.query_one("#detail", Static).update(evaluation_lines(self.rows[key]) if key in self.rows
                                                 else "no checkpoints yet")

    # -- export ----------------------------------------------------------------------------------

    def action_export(self) -> None:
        key = cursor_key(self.query_one("#checkpoint-table", DataTable))
        if self.exporting:
            self.notify("An export is already running", severity="warning")
            return
        if key not in self.rows or self.rows[key]["status"] != "complete":
            self.notify("Only a complete checkpoint can be exported", severity="warning")
            return
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.source.run_dir / "exports" / f"checkpoint-{key}-{stamp}"
        argv = self.app.export_argv(self.source.run_dir, out, key)
        self.exporting = True
        self.add_class("exporting")
        self.query_one("#export-status", Static).update(escape(f"exporting checkpoint {key} to {out} …"))
        self.run_export(argv, str(out))

    @work(thread=True, group="export")
    def run_export(self, argv: list[str], out: str) -> None:
        worker = get_current_worker()
        started = time.monotonic()
        # O_APPEND: the child's writes land at the end whatever offset our reads leave on the shared file
        with tempfile.TemporaryFile(mode="a+b") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            while process.poll() is None:
                if worker.is_cancelled:  # the app is closing: do not leave an orphan export behind
                    process.terminate()
                    process.wait()
                    return
                self.post_message(self.ExportProgress(time.monotonic() - started, _last_line(log)))
                time.sleep(0.25)
            log.seek(0)
            output = log.read().decode(errors="replace")
        self.post_message(self.ExportFinished(process.returncode, out, output))

    @on(ExportProgress)
    def export_progress(self, message: ExportProgress) -> None:
        line = f" · {fmt.short(message.line, 50)}" if message.line else ""
        self.query_one("#export-status", Static).update(escape(f"exporting… {fmt.duration(message.seconds)}{line}"))

    @on(ExportFinished)
    def export_finished(self, message: ExportFinished) -> None:
        self.exporting = False
        self.remove_class("exporting")
        lines = message.output.strip().splitlines()
        if message.returncode == 0:
            text = f"exported to {lines[-1] if lines else message.out}"
            self.notify(text, title="Export")
        else:
            text = f"export failed (exit {message.returncode}): {lines[-1] if lines else 'no output'}"
            self.notify(text, title="Export", severity="error")
        self.query_one("#export-status", Static).update(escape(text))


def _last_line(log) -> str:
    """The last line the export printed so far."""
    size = log.seek(0, 2)
    log.seek(max(0, size - 400))
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
