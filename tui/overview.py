"""The Overview tab: where the run stands, and plots over teacher steps (hard-test pass@k, teacher reward,
student reward). Everything here comes with the screen's Overview poll; the tab reads nothing itself."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from tui import fmt
from tui.queries import Overview, pass_keys
from tui.tab import TabBody
from tui.widgets import Chart


def smallest_and_largest_k(summary: dict) -> str:
    """pass@1 and pass@<largest k> as percentages, like `soar status` ("pass@1 30.0% pass@4 60.0%")."""
    keys = pass_keys(summary)
    return "  ".join(f"{k} {fmt.percent(summary[k])}" for k in dict.fromkeys([*keys[:1], *keys[-1:]])) or "-"


def stats_table(o: Overview) -> Table:
    """Ten short rows: at 80x24 the stats pane (38 columns by 10 rows) shows every one whole, unwrapped."""
    run = o.run
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    step = str(o.teacher_step) + (f" ({o.in_progress_step} running)" if o.in_progress_step else "")
    hard = smallest_and_largest_k(o.hard_test[-1][1] if o.hard_test else {})
    if o.attached:
        agent = f"[green]attached[/] ({fmt.duration(o.heartbeat_age_s)} ago)"
    elif o.heartbeat_age_s is None:
        agent = "[yellow]none attached[/]"
    else:
        agent = f"[yellow]detached[/] (seen {fmt.duration(o.heartbeat_age_s)} ago)"
    reward = "-"
    if o.last_reward is not None:
        mean, stderr, metric = o.last_reward
        reward = f"{mean:+.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "") + (f" ({metric})" if metric else "")
    rows = [
        ("run", f"{run['name']} · {run['mode']}"),
        ("status", f"{run['status']} · {o.phase}"),
        ("step", f"{step} · {o.promotions} promoted"),
        ("elapsed", fmt.duration(o.elapsed_s) + (f" · left {fmt.duration(o.remaining_s)}"
                                                  if o.remaining_s is not None else "")),
        ("last step", f"{fmt.duration(o.last_step_seconds)} · {fmt.number(o.tokens_per_second, 0)} tokens/s"),
        ("reward", reward),
        ("kept", "-" if o.kept is None else f"{o.kept[1]:.0%} of samples (step {o.kept[0]})"),
        ("hard-test", hard),
        ("PQ student", smallest_and_largest_k(o.pq)),  # the final training's student: the model `soar run` exports
        ("agent", agent),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def pass_series(o: Overview) -> dict[str, list[tuple[float, float]]]:
    """pass@1 and the largest k evaluated, over teacher steps, in percent."""
    keys = pass_keys(o.hard_test[-1][1]) if o.hard_test else []
    wanted = list(dict.fromkeys([*keys[:1], *keys[-1:]]))
    return {k: [(step, 100 * s[k]) for step, s in o.hard_test if k in s] for k in wanted}


class OverviewTab(TabBody):
    DEFAULT_CSS = """
    OverviewTab Grid { grid-size: 2 2; grid-columns: 1fr 1fr; grid-rows: 1fr 1fr; }
    OverviewTab #stats { padding: 0 1; height: 1fr; overflow-y: auto; }
    """

    def compose(self) -> ComposeResult:
        with Grid():
            yield Static("loading…", id="stats")
            yield Chart("hard-test pass@k (%)", id="pass-chart")
            yield Chart("teacher reward", id="teacher-chart")
            yield Chart("student reward", id="student-chart")

    def watch_overview(self, o: Overview | None) -> None:
        if o is None:
            return
        self.query_one("#stats", Static).update(stats_table(o))
        self.query_one("#pass-chart", Chart).set_series(pass_series(o))
        self.query_one("#teacher-chart", Chart).set_series({"mean": o.teacher_reward, "moving avg": o.moving_average})
        self.query_one("#student-chart", Chart).set_series({"reward_mean": o.student_reward})
