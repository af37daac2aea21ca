"""Runs and what is said about them: the runs table (status, heartbeat), log events, and the commands the TUI
sends the agent (pause, resume, stop, ...).

``RunRecords`` is a part of ``Store`` (soar_agent/store/__init__.py), which provides the transactions
(``_write``), the reads (``_rows``, ``_row``) and the clock (``_now``) it uses."""

from __future__ import annotations

from soar_agent.store.common import COMMANDS, EVENT_LEVELS, StoreError, _check, _decode, _dumps, _no_run


class RunRecords:
    # -- runs ---------------------------------------------------------------------------------------

    def create_run(self, *, name: str, mode: str, config: dict | None = None, model_path: str | None = None,
                   status: str = "created") -> int:
        config_json = _dumps(config or {}, "config")
        return self._write(lambda c: c.execute(
            "INSERT INTO runs (name, mode, created_at, config_json, status, model_path) VALUES (?, ?, ?, ?, ?, ?)",
            (name, mode, self._now(), config_json, status, None if model_path is None else str(model_path)),
        ).lastrowid)

    def heartbeat(self, run_id: int) -> None:
        """The agent is alive and polling commands (written between units of work)."""
        self._write(lambda c: c.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (self._now(), run_id)))

    def set_run_status(self, run_id: int, status: str) -> None:
        self._write(lambda c: c.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id)))

    def get_run(self, run_id: int) -> dict | None:
        return _decode(self._row("SELECT * FROM runs WHERE id = ?", (run_id,)))

    def latest_run(self) -> dict | None:
        return _decode(self._row("SELECT * FROM runs ORDER BY id DESC LIMIT 1"))

    def require_run(self) -> dict:
        """The latest run, or StoreError when the store holds none (e.g. its WAL was lost)."""
        run = self.latest_run()
        if run is None:
            raise StoreError(_no_run(self.path))
        return run

    def runs(self) -> list[dict]:
        return [_decode(r) for r in self._rows("SELECT * FROM runs ORDER BY id")]

    # -- events -------------------------------------------------------------------------------------

    def log_event(self, *, run_id: int | None, level: str, kind: str, message: str, data: dict | None = None) -> int:
        """Append a log event (``run_id`` may be None for process-level events before a run exists)."""
        _check(level, EVENT_LEVELS, "level")
        data_json = _dumps(data or {}, "data")
        return self._write(lambda c: c.execute(
            "INSERT INTO events (run_id, ts, level, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, self._now(), level, kind, message, data_json),
        ).lastrowid)

    def last_session(self, run_id: int) -> dict | None:
        """The run's latest `session` event (Agent.run), with `last_write`: the time of the newest row the run
        stored since (event, training, checkpoint, evaluation, rollout, heartbeat), where a session that was
        killed stopped doing work that counts. None before the run's first session."""
        session = _decode(self._row("SELECT * FROM events WHERE run_id = ? AND kind = 'session' ORDER BY id DESC"
                                    " LIMIT 1", (run_id,)))
        if session is None:
            return None
        latest = [session["ts"], (self.get_run(run_id) or {}).get("heartbeat_at") or ""]
        for table, column in (("events", "ts"), ("trainings", "created_at"), ("checkpoints", "created_at"),
                              ("evaluations", "created_at"), ("rollouts", "created_at")):
            row = self._row(f"SELECT {column} AS at FROM {table} WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,))
            latest.append(row["at"] if row else "")
        session["last_write"] = max(latest)  # ISO timestamps in UTC with one format (_now): ordered as text
        return session

    def events(self, run_id: int | None, level: str | None = None, limit: int = 200,
               after_id: int | None = None) -> list[dict]:
        """Events oldest first. ``level`` is a minimum severity (``"warning"`` gives warnings and errors).
        Without ``after_id``: the most recent ``limit`` events. With it: the first ``limit`` events after
        that id, for tailing (pass the last id seen)."""
        where, params = "run_id IS ?", [run_id]
        if level is not None:
            _check(level, EVENT_LEVELS, "level")
            levels = EVENT_LEVELS[EVENT_LEVELS.index(level):]
            where += f" AND level IN ({', '.join('?' * len(levels))})"
            params += levels
        if after_id is None:
            sql = f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?) ORDER BY id"
        else:
            where += " AND id > ?"
            params.append(after_id)
            sql = f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?"
        return [_decode(r) for r in self._rows(sql, [*params, int(limit)])]

    # -- commands (TUI -> agent) -----------------------------------------------------------------------

    def send_command(self, *, run_id: int, command: str, args: dict | None = None) -> int:
        """Queue a command for the agent. The TUI reads through a read-only Store, so it sends commands
        through a short-lived read-write one: ``with Store(path) as s: s.send_command(...)``."""
        _check(command, COMMANDS, "command")
        args_json = _dumps(args or {}, "args")
        return self._write(lambda c: c.execute(
            "INSERT INTO commands (run_id, command, args_json, created_at) VALUES (?, ?, ?, ?)",
            (run_id, command, args_json, self._now()),
        ).lastrowid)

    def pending_commands(self, run_id: int) -> list[dict]:
        """Unacknowledged commands, oldest first."""
        return [_decode(r) for r in self._rows(
            "SELECT * FROM commands WHERE run_id = ? AND acked_at IS NULL ORDER BY id", (run_id,)
        )]

    def commands(self, run_id: int) -> list[dict]:
        return [_decode(r) for r in self._rows("SELECT * FROM commands WHERE run_id = ? ORDER BY id", (run_id,))]

    def ack_command(self, command_id: int, message: str = "") -> bool:
        """Acknowledge a command; False if it was already acknowledged (the first ack wins)."""
        return self._write(lambda c: c.execute(
            "UPDATE commands SET acked_at = ?, ack_message = ? WHERE id = ? AND acked_at IS NULL",
            (self._now(), message, command_id),
        ).rowcount == 1)
