"""What a run reports while it trains: a progress bar (or log lines), and a metrics JSONL file."""
from __future__ import annotations

import json
import time
from pathlib import Path


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class MetricsLog:
    """One JSON object per optimizer step (field names close to LLaMA-Factory's trainer_log),
    each tagged with the run's id so runs that share an output_dir can be told apart.

    A resumed run (resume_step N) first drops the records of steps after N that the interrupted
    run wrote (they are trained again), so the file keeps one record per step; then it appends
    {"event": "resume", "step": N, ...} and its own records.
    """

    def __init__(self, path: Path, run_id: str | None = None, resume_step: int | None = None,
                 mirrors: tuple = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.run_id = run_id
        self.mirrors = mirrors   # other sinks fed the same records (TensorBoard)
        if resume_step is not None and path.is_file():
            self._drop_after(resume_step)
        self.f = open(path, "a", encoding="utf-8")
        # A run killed mid-write leaves a partial last line; start ours on a line of its own.
        if self.f.tell():
            with open(path, "rb") as tail:
                tail.seek(-1, 2)
                if tail.read(1) != b"\n":
                    self.f.write("\n")

    def _drop_after(self, step: int) -> None:
        from petrun.atomic import atomic_file
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue   # the partial last line of a killed run
            mine = self.run_id is None or record.get("run_id") in (None, self.run_id)
            if mine and isinstance(record.get("step"), int) and record["step"] > step:
                continue
            kept.append(line)
        with atomic_file(self.path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.run_id is not None:
            record = {**record, "run_id": self.run_id}
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        for sink in self.mirrors:
            sink.write(record)

    def close(self) -> None:
        self.f.close()
        for sink in self.mirrors:
            sink.close()


class Progress:
    """A rich progress bar on a terminal; plain lines every `every` steps otherwise (logs, CI)."""

    def __init__(self, console, total: int, every: int = 1, enabled: bool = True):
        self.console = console
        self.total = total
        self.every = max(1, every)
        self.enabled = enabled
        self.bar = None
        self.start = time.perf_counter()
        # (step, time) when the first step ended: the rate for the ETA is measured from there,
        # since the first step includes the graph compile (tens of seconds on a small model).
        self.first: tuple[int, float] | None = None
        if enabled and console is not None and console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                    TextColumn("eta"), TimeRemainingColumn(), console=console,
                                    transient=False)
            self.task = self.bar.add_task("train", total=total, stats="compiling…")
            self.bar.start()

    def update(self, step: int, epoch: int, loss: float, lr: float, tok_s: float, norm: float,
               overflow: bool) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s" + (" overflow" if overflow else "")
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats)
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        if self.bar is None and (step % self.every == 0 or step == self.total):
            elapsed = now - self.start
            done, since = step - self.first[0], now - self.first[1]
            eta = _fmt_time(since / done * (self.total - step)) if done else "--:--"
            self.console.print(f"epoch {epoch} step {step}/{self.total} | loss {loss:.4f} | "
                               f"lr {lr:.3e} | grad_norm {norm:.3f} | {tok_s:,.0f} tok/s | "
                               f"elapsed {_fmt_time(elapsed)} | eta {eta}"
                               + (" | overflow: step skipped" if overflow else ""), highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if self.enabled and self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
