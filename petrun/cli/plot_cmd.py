"""`petrun plot RUN [RUN...]`: loss, eval loss and learning rate of runs on shared axes."""
from __future__ import annotations

from typing import List, Optional

import typer

from petrun.cli.common import console
from petrun.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("plot")
    def plot_cmd(runs: List[str] = typer.Argument(..., help="Output dirs (or metrics.jsonl files) of runs."),
                 out: str = typer.Option("petrun_plot.png", "--out", "-o", help="PNG to write."),
                 labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated names, one per RUN (default: the paths).")):
        """Plot training loss, eval loss and learning rate of one or several runs (PNG).

        petrun plot output_r8 output_r16 --labels r8,r16 -o lora_rank.png
        """
        from petrun.train.plot import plot, read_series
        names = labels.split(",") if labels else list(runs)
        if len(names) != len(runs):
            raise UserError(f"{len(names)} labels for {len(runs)} runs", key="--labels",
                            fix="give one label per RUN, separated by commas")
        series = [read_series(r, n) for r, n in zip(runs, names)]
        plot(series, out)
        steps = ", ".join(f"{s.label}: {len(s.steps)} steps" for s in series)
        console.print(f"wrote {out} ({steps})", highlight=False)
