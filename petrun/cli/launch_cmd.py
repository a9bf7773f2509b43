"""`petrun launch`: run a petrun command as a distributed job (petrun.parallel.launch does the work;
scripts/msrun_launcher.sh is the same launcher with MindFormers' positional arguments)."""
from __future__ import annotations

import shlex
import sys
from typing import Optional

import typer

from petrun.cli.common import console, err_console

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def launch(ctx: typer.Context,
           worker_num: int = typer.Option(8, "--worker-num", help="Workers in the whole job (msrun --worker_num)."),
           local_worker_num: Optional[int] = typer.Option(None, "--local-worker-num", help="Workers on this node (default: all)."),
           master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0, where the scheduler runs."),
           master_port: int = typer.Option(8118, "--master-port", help="Scheduler port."),
           node_rank: int = typer.Option(0, "--node-rank", help="This node's index (several nodes)."),
           log_dir: str = typer.Option("output/msrun_log", "--log-dir", help="scheduler.log and worker_<rank>.log go here."),
           join: bool = typer.Option(True, "--join/--no-join", help="Wait for the job (default) or return at once."),
           cluster_time_out: int = typer.Option(7200, "--cluster-time-out", help="Seconds to wait for every worker to join."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run (and the msrun equivalent) and exit."),
           ):
    """Start WORKER_NUM processes of a command (after `--`) and supervise them.

    petrun launch --worker-num 2 -- petrun finetune --config configs/llama2/lora_llama2_tiny.yaml --use_parallel True

    Rank 0's output is echoed here; every rank logs to LOG_DIR/worker_<rank>.log. If a worker dies,
    the others are stopped and the exit status is non-zero, with the dead rank's last log lines.
    --no-join returns at once (like MindFormers' script); the outcome lands in LOG_DIR/launch_status.json.
    """
    from petrun.parallel import launch as L

    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    spec = L.LaunchSpec(worker_num=worker_num, local_worker_num=local_worker_num,
                        master_addr=master_addr, master_port=master_port, node_rank=node_rank,
                        log_dir=log_dir, join=join, cluster_time_out=cluster_time_out).validate()
    argv = L.resolve_command(command)
    if dry_run:
        console.print(f"{spec.local} worker(s) of {spec.worker_num}: {shlex.join(argv)}", highlight=False,
                      soft_wrap=True)
        console.print(f"msrun equivalent: {shlex.join(L.msrun_equivalent(spec, argv))}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(0)
    result = L.launch(spec, argv, out=sys.stdout)
    if isinstance(result, int):
        console.print(f"started {spec.local} workers in the background (supervisor pid {result}); "
                      f"logs: {log_dir}/worker_<rank>.log; outcome: {log_dir}/{L.STATUS_FILE}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(0)
    if result.rc:
        from rich.markup import escape
        err_console.print(f"[bold red]error:[/bold red] {escape(L.format_result(result))}",
                          highlight=False, soft_wrap=True)
    else:
        console.print(f"[green]{result.message}[/green] ({result.wall_s:.1f} s)", highlight=False)
    # sys.exit, not typer.Exit: main() runs typer with standalone_mode=False, which turns Exit
    # into a return value it does not pass on.
    sys.exit(result.rc)


def register(app: typer.Typer) -> None:
    app.command("launch", context_settings=CONTEXT)(launch)
