"""`petrun launch`: run a petrun command as a distributed job (petrun.parallel.launch does the work;
scripts/msrun_launcher.sh is the same launcher with MindFormers' positional arguments)."""
from __future__ import annotations

import shlex
import sys
from typing import Optional

import typer

from typer.core import TyperCommand

from petrun.cli.common import console, err_console
from petrun.errors import UserError

# allow_interspersed_args False: as with msrun, every word after the command belongs to it
# (`petrun launch --worker_num 2 run_mindformer.py --config C …` needs no `--`).
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True,
           "allow_interspersed_args": False}

# msrun's options (MindSpore 2.10's `msrun --help`) that petrun has no use for: accepted with a
# note (they tune placement, not results) or refused with petrun's way to get the same.
MSRUN_IGNORED = {
    "--bind_core": "petrun does not pin workers to cores",
    "--bind_numa": "petrun does not pin workers to NUMA nodes",
    "--rank_table_file": "it is auxiliary in msrun too; workers find each other through the "
                         "scheduler",
}
MSRUN_REFUSED = {
    "--sim_level": "msrun's dry-run simulation compiles a job without devices",
    "--sim_rank_id": "msrun's dry-run simulation compiles a job without devices",
    "--worker_log_name": "petrun names worker logs LOG_DIR/worker_<rank>.log",
}
MSRUN_REFUSED_FIX = {
    "--sim_level": "petrun launch --dry-run prints what would run; petrun plan --config C "
                   "--devices N estimates memory per device",
    "--sim_rank_id": "petrun launch --dry-run prints what would run; petrun plan --config C "
                     "--devices N estimates memory per device",
    "--worker_log_name": "choose the folder with --log_dir",
}


def msrun_spellings(args: list[str]) -> tuple[list[str], list[str]]:
    """Launch options as msrun spells them → petrun's, up to the command (the first word that
    is not an option, or `--`). `--join True|False` (msrun's join takes a value) becomes
    --join/--no-join; ignored options are dropped with a note; the others are aliases that
    click reads itself. Returns (args, notes)."""
    out, notes, i = [], [], 0
    valued = {"--worker-num", "--worker_num", "--local-worker-num", "--local_worker_num",
              "--master-addr", "--master_addr", "--master-port", "--master_port", "--node-rank",
              "--node_rank", "--log-dir", "--log_dir", "--cluster-time-out", "--cluster_time_out",
              "--tail-worker-log", "--tail_worker_log"}
    while i < len(args):
        word = args[i]
        if word == "--" or not word.startswith("-"):
            return out + args[i:], notes
        name, eq, value = word.partition("=")
        if name in MSRUN_IGNORED or name in MSRUN_REFUSED:
            if name in MSRUN_REFUSED:
                raise UserError(f"{name} is not supported: {MSRUN_REFUSED[name]}", key=name,
                                fix=MSRUN_REFUSED_FIX[name])
            notes.append(f"{name} is accepted and ignored: {MSRUN_IGNORED[name]}")
            i += 1 if eq else 2
            continue
        if name == "--join":
            nxt = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if nxt.lower() in ("true", "false"):
                out.append("--join" if nxt.lower() == "true" else "--no-join")
                i += 1 if eq else 2
                continue
            if eq:
                raise UserError(f"--join expects True or False, got '{value}'", key="--join",
                                fix="write --join True (wait, the default) or --join False")
        out.append(word)
        if name in valued and not eq and i + 1 < len(args):
            out.append(args[i + 1])
            i += 1
        i += 1
    return out, notes


class LaunchCommand(TyperCommand):
    """`petrun launch` reading msrun's spellings too (see msrun_spellings)."""

    def parse_args(self, ctx, args):
        args, notes = msrun_spellings(list(args))
        ctx.meta["msrun_notes"] = notes
        return super().parse_args(ctx, args)


def launch(ctx: typer.Context,
           worker_num: int = typer.Option(8, "--worker-num", "--worker_num", help="Workers in the whole job."),
           local_worker_num: Optional[int] = typer.Option(None, "--local-worker-num", "--local_worker_num", help="Workers on this node (default: all)."),
           master_addr: str = typer.Option("127.0.0.1", "--master-addr", "--master_addr", help="Address of node 0, where the scheduler runs."),
           master_port: int = typer.Option(8118, "--master-port", "--master_port", help="Scheduler port."),
           node_rank: int = typer.Option(0, "--node-rank", "--node_rank", help="This node's index (several nodes)."),
           log_dir: str = typer.Option("output/msrun_log", "--log-dir", "--log_dir", help="scheduler.log and worker_<rank>.log go here."),
           join: bool = typer.Option(True, "--join/--no-join", help="Wait for the job (default) or return at once (msrun: --join True|False)."),
           cluster_time_out: int = typer.Option(7200, "--cluster-time-out", "--cluster_time_out", help="Seconds to wait for every worker to join."),
           tail_worker_log: int = typer.Option(0, "--tail-worker-log", "--tail_worker_log", help="Whose log to echo while joined (msrun's local worker index; -1: none)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run (and the msrun equivalent) and exit."),
           ):
    """Start WORKER_NUM processes of a command (after `--`) and supervise them.

    petrun launch --worker-num 2 -- petrun finetune --config configs/llama2/lora_llama2_tiny.yaml --use_parallel True

    petrun launch --worker_num=2 --join=True run_mindformer.py --config C --run_mode finetune --use_parallel True

    msrun's spellings work too (--worker_num=2, --log_dir, --join True|False, ...); everything
    after the command is the command's. Rank 0's output is echoed here; every rank logs to LOG_DIR/worker_<rank>.log. If a worker dies,
    the others are stopped and the exit status is non-zero, with the dead rank's last log lines.
    --no-join returns at once (like MindFormers' script); the outcome lands in LOG_DIR/launch_status.json.
    """
    from petrun.parallel import launch as L

    for note in ctx.meta.get("msrun_notes", []):
        err_console.print(f"note: {note}", style="dim", markup=False, highlight=False)
    command = list(ctx.args)
    if command[:1] == ["--"]:
        command = command[1:]
    spec = L.LaunchSpec(worker_num=worker_num, local_worker_num=local_worker_num,
                        master_addr=master_addr, master_port=master_port, node_rank=node_rank,
                        log_dir=log_dir, join=join, cluster_time_out=cluster_time_out).validate()
    spec.tail_rank = _tail_rank(spec, tail_worker_log)
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


def _tail_rank(spec, local_index: int):
    """msrun's --tail_worker_log counts this node's workers; petrun echoes a rank."""
    if local_index < 0:
        return None
    if local_index >= spec.local:
        raise UserError(f"--tail_worker_log {local_index} is not a worker of this node (0 to "
                        f"{spec.local - 1})", key="--tail_worker_log",
                        fix="give a local worker index, or -1 to echo none")
    return spec.global_rank(local_index) if spec.global_rank(local_index) is not None else local_index


def register(app: typer.Typer) -> None:
    app.command("launch", cls=LaunchCommand, context_settings=CONTEXT)(launch)
