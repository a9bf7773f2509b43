"""Start a distributed job: one scheduler and N workers running the same command, supervised.

Shared by `petrun launch` and scripts/msrun_launcher.sh (which keeps MindFormers' positional forms,
reference/mindformers.md §3.1). Instead of calling msrun, petrun starts the processes itself with
the environment msrun would give them (feasibility.md §3): MS_ROLE, MS_SCHED_HOST/PORT,
MS_WORKER_NUM, MS_NODE_ID, MS_TOPO_TIMEOUT, RANK_ID, RANK_SIZE, DEVICE_ID. That lets it watch
the workers: when one dies, the others are stopped at once (msrun takes ~20 s and then names the
wrong rank) and the launcher exits non-zero naming the rank and the last lines of its log.

Commands: "petrun finetune …" runs as `python -m petrun finetune …` (a console script cannot be
given to `python` by name); "run_mindformer.py …" (MindFormers' entry, with or without python or a
folder in front) runs as `python -m petrun run …`, the verb its --run_mode names; "x.py …" runs as
`python x.py …`; "python …" uses this interpreter.
Logs: <log_dir>/scheduler.log and worker_<rank>.log; <log_dir>/launch.json lists the processes;
<log_dir>/launch_status.json holds the outcome once the job ends.

join: True waits for the job (what `petrun launch` does by default); False returns at once
(MindFormers' default for the script) and leaves a detached supervisor that still stops the job
when a worker dies and writes launch_status.json.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from petrun.errors import UserError

STATUS_FILE = "launch_status.json"
PROCS_FILE = "launch.json"


@dataclass
class LaunchSpec:
    worker_num: int = 8
    local_worker_num: int | None = None      # None: all workers on this node
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    node_rank: int = 0
    log_dir: str = "output/msrun_log"
    join: bool = True
    cluster_time_out: int = 7200
    tail_rank: int | None = 0                # whose log to echo while joined (None: nobody)
    tail_lines: int = 20                     # lines of a dead worker's log to show
    grace_s: float = 5.0                     # SIGTERM → SIGKILL delay when stopping workers

    @property
    def local(self) -> int:
        return self.worker_num if self.local_worker_num is None else self.local_worker_num

    def validate(self) -> "LaunchSpec":
        if self.worker_num < 1:
            raise UserError(f"worker number must be at least 1, got {self.worker_num}",
                            key="--worker-num",
                            fix="give the number of processes of the whole job, e.g. "
                                "--worker-num 2 (WORKER_NUM in msrun_launcher.sh)")
        if not 1 <= self.local <= self.worker_num:
            raise UserError(f"local worker number {self.local} must be between 1 and the worker "
                            f"number {self.worker_num}", key="--local-worker-num",
                            fix=f"leave --local-worker-num out to run all {self.worker_num} "
                                "workers on this node, or give this node's share of them "
                                "(LOCAL_WORKER in msrun_launcher.sh)")
        multi = self.local < self.worker_num
        if multi and self.node_rank >= 0 and (self.node_rank + 1) * self.local > self.worker_num:
            raise UserError(f"node_rank {self.node_rank} × {self.local} local workers exceeds "
                            f"{self.worker_num} workers", key="--node-rank",
                            fix="node ranks count nodes from 0; every node runs the same number "
                                "of workers")
        if not 0 < self.master_port < 65536:
            raise UserError(f"port {self.master_port} is out of range", key="--master-port",
                            fix="pass a port between 1 and 65535, e.g. --master-port 8118")
        return self

    def global_rank(self, local_rank: int) -> int | None:
        """This node's worker `local_rank` as a global rank (None: MindSpore assigns it)."""
        if self.local == self.worker_num:
            return local_rank
        if self.node_rank < 0:
            return None
        return self.node_rank * self.local + local_rank


# --------------------------------------------------------------------------- MindFormers' forms
MF_USAGE = ('bash scripts/msrun_launcher.sh "COMMAND" [WORKER_NUM] '
            '| "COMMAND" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT '
            '| "COMMAND" WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK LOG_DIR JOIN '
            'CLUSTER_TIME_OUT')


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{what} must be a number, got {value!r}", key=what,
                        fix=f"usage: {MF_USAGE}") from None


def _bool(value: str, what: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise UserError(f"{what} must be True or False, got {value!r}", key=what, fix=f"usage: {MF_USAGE}")


def parse_mindformers_args(args: list[str], env=None) -> tuple[LaunchSpec, str]:
    """msrun_launcher.sh's positional arguments (1, 2, 6 or 9 of them) → (spec, command)."""
    env = os.environ if env is None else env
    n = len(args)
    if n not in (1, 2, 6, 9):
        raise UserError(f"expected 1, 2, 6 or 9 arguments, got {n}", key="arguments",
                        fix=f"usage: {MF_USAGE} (quote the command as one argument)")
    spec = LaunchSpec(join=False)   # MindFormers' default: return once the job is spawned
    command = args[0]
    if n >= 2:
        spec.worker_num = _int(args[1], "WORKER_NUM")
    if n == 6:
        spec.master_port = _int(args[2], "MASTER_PORT")
        spec.log_dir = args[3]
        spec.join = _bool(args[4], "JOIN")
        spec.cluster_time_out = _int(args[5], "CLUSTER_TIME_OUT")
    elif n == 9:
        spec.local_worker_num = _int(args[2], "LOCAL_WORKER")
        spec.master_addr = args[3]
        spec.master_port = _int(args[4], "MASTER_PORT")
        spec.node_rank = _int(args[5], "NODE_RANK")
        spec.log_dir = args[6]
        spec.join = _bool(args[7], "JOIN")
        spec.cluster_time_out = _int(args[8], "CLUSTER_TIME_OUT")
    suffix = env.get("MF_LOG_SUFFIX")
    if suffix:
        spec.log_dir = f"{spec.log_dir}_{suffix}"
    return spec, command


# --------------------------------------------------------------------------- the command
def resolve_command(command: str | list[str]) -> list[str]:
    """The argv each process runs, with this interpreter (msrun would run a bare `python` found on
    PATH, and cannot run a console script given by name)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise UserError("no command to launch", key="command",
                        fix='e.g. petrun launch --worker-num 2 -- petrun finetune --config C '
                            '--use_parallel True')
    head = argv[0]
    name = os.path.basename(head)
    if name == "petrun":
        return [sys.executable, "-m", "petrun", *argv[1:]]
    is_python = name in ("python", "python3") or name.startswith("python3.")
    script = argv[1] if is_python and len(argv) > 1 else head
    if os.path.basename(script) == MF_SCRIPT:
        # MindFormers' entry, as its documents launch it: petrun's equivalent is `petrun run`.
        # Anything before the script (python's own options) has no meaning for petrun.
        rest = argv[argv.index(script) + 1:]
        return [sys.executable, "-m", "petrun", "run", *_mf_config_path(script, rest)]
    if is_python:
        return [sys.executable, *argv[1:]]
    if head.endswith(".py"):
        if not os.path.isfile(head):
            raise UserError("script not found", file=head, key="command",
                            fix="give the script's path relative to the current folder")
        return [sys.executable, *argv]
    raise UserError(f"cannot launch {head!r}: the workers run Python", key="command",
                    fix='give "petrun <verb> …", "run_mindformer.py …", "script.py …" or '
                        '"python -m module …"')


MF_SCRIPT = "run_mindformer.py"


def _mf_config_path(script: str, args: list[str]) -> list[str]:
    """run_mindformer.py reads a relative --config against its own folder (not the current
    one); with a path such as mindformers/run_mindformer.py, do the same when that file exists
    there. A bare run_mindformer.py sits in the current folder, so nothing changes."""
    folder = os.path.dirname(script)
    if not folder:
        return args
    out = list(args)
    for i, word in enumerate(out):
        name, eq, value = word.partition("=")
        if name not in ("--config", "-c"):
            continue
        if not eq and i + 1 < len(out):
            value = out[i + 1]
        if value and not os.path.isabs(value) and os.path.isfile(os.path.join(folder, value)):
            fixed = os.path.join(folder, value)
            if eq:
                out[i] = f"{name}={fixed}"
            else:
                out[i + 1] = fixed
        break
    return out


def msrun_equivalent(spec: LaunchSpec, argv: list[str]) -> list[str]:
    """The msrun command that would start the same job (printed by --dry-run, for reference)."""
    cmd = ["msrun", f"--worker_num={spec.worker_num}", f"--local_worker_num={spec.local}",
           f"--master_port={spec.master_port}", f"--log_dir={spec.log_dir}",
           f"--join={spec.join}", f"--cluster_time_out={spec.cluster_time_out}"]
    if spec.local < spec.worker_num:
        cmd[3:3] = [f"--master_addr={spec.master_addr}", f"--node_rank={spec.node_rank}"]
    return cmd + ["python", *argv[1:]]


def _resolve_host(addr: str) -> str:
    host = addr.strip("[]")
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise UserError(f"cannot resolve the master address {addr!r}", key="--master-addr",
                        fix="give the IP address or a resolvable host name of node 0") from None


def _is_local(ip: str) -> bool:
    """Whether `ip` belongs to this machine (binding to it succeeds only then)."""
    if ip.startswith("127.") or ip in ("0.0.0.0", "localhost"):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def process_env(spec: LaunchSpec, role: str, host: str, global_rank: int | None = None,
                local_rank: int = 0, job_id: str = "", base: dict | None = None) -> dict:
    """The environment msrun gives a scheduler (role MS_SCHED) or worker (MS_WORKER)."""
    env = dict(os.environ if base is None else base)
    bindir = os.path.dirname(sys.executable)
    # A child that calls `python` (msrun-style tools) must find this interpreter first.
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(MS_ROLE=role, MS_SCHED_HOST=host, MS_SCHED_PORT=str(spec.master_port),
               MS_WORKER_NUM=str(spec.worker_num), MS_TOPO_TIMEOUT=str(spec.cluster_time_out),
               RANK_SIZE=str(spec.worker_num), PYTHONUNBUFFERED="1", PETRUN_JOB_ID=job_id)
    # MindSpore's C++ log level (0 debug, 1 info, 2 warning, 3 error): warnings and up unless the
    # user chose a level; its INFO chatter would otherwise fill every worker's log.
    env.setdefault("GLOG_v", "2")
    if role == "MS_SCHED":
        env["RANK_ID"] = "0"
        env.pop("MS_NODE_ID", None)
    else:
        env["DEVICE_ID"] = str(local_rank)
        if global_rank is not None:
            env["MS_NODE_ID"] = str(global_rank)
            env["RANK_ID"] = str(global_rank)
        else:
            env.pop("MS_NODE_ID", None)
            env.pop("RANK_ID", None)
    return env


# --------------------------------------------------------------------------- supervision
@dataclass
class Proc:
    name: str                 # "scheduler" or "rank 3"
    rank: int | None
    popen: subprocess.Popen
    log: Path


@dataclass
class LaunchResult:
    rc: int
    message: str
    failed: str | None = None          # "rank 1" / "scheduler"
    log: str | None = None
    tail: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def tail_lines(path: Path, n: int) -> list[str]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=n)]
    except OSError:
        return []


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


# A MindSpore C++ log line below warning level: "[INFO] DISTRIBUTED(12039,7f7f…,python):…".
_MS_CHATTER = re.compile(r"\[(DEBUG|INFO)\] [A-Z_]+\(\d+,")


def quiet_echo(env=None) -> bool:
    """Whether the echo leaves out MindSpore's C++ DEBUG/INFO lines: unless the workers run with
    GLOG_v 0 or 1. MindSpore prints a few INFO lines while it tears its cluster down at exit,
    whatever GLOG_v says, so the level alone does not keep them off the terminal."""
    level = (os.environ if env is None else env).get("GLOG_v", "2").strip()
    return level not in ("0", "1")


class _Echo(threading.Thread):
    """Copies one worker's log to our stdout while the job runs (only rank 0 by default); with
    `quiet`, MindSpore's C++ DEBUG/INFO lines stay in the log file only."""

    def __init__(self, path: Path, out, quiet: bool = False):
        super().__init__(daemon=True)
        self.path, self.out, self.quiet, self.stop = path, out, quiet, threading.Event()

    def run(self):
        pos, partial = 0, ""
        while True:
            done = self.stop.is_set()
            try:
                with open(self.path, "r", encoding="utf-8", errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            if self.quiet:
                # whole lines only, so a line read in two pieces is still recognised
                partial += chunk
                cut = len(partial) if done else partial.rfind("\n") + 1
                chunk, partial = partial[:cut], partial[cut:]
                chunk = "".join(line for line in chunk.splitlines(keepends=True)
                                if not _MS_CHATTER.match(line))
            if chunk:
                self.out.write(chunk)
                self.out.flush()
            if done:
                return
            self.stop.wait(0.2)


def start(spec: LaunchSpec, argv: list[str], *, env: dict | None = None) -> list[Proc]:
    """Spawn the scheduler (on the master node) and this node's workers; return them."""
    spec.validate()
    host = _resolve_host(spec.master_addr)
    log_dir = Path(spec.log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the log folder ({e.strerror})", file=str(log_dir),
                        key="LOG_DIR", fix="choose a writable log folder") from None
    master = spec.local == spec.worker_num or _is_local(host)
    if master and not _port_free(host, spec.master_port):
        raise UserError(f"port {spec.master_port} on {host} is in use (another job still running?)",
                        key="--master-port", fix="pass another master port, or stop the other job")
    job_id = uuid.uuid4().hex[:12]
    procs: list[Proc] = []

    def spawn(name, rank, role, log_name, local_rank=0):
        log = log_dir / log_name
        with open(log, "w", encoding="utf-8") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=process_env(spec, role, host, rank, local_rank, job_id, env),
                                 start_new_session=True)   # own group: we stop its children too
        procs.append(Proc(name, rank, p, log))

    try:
        if master:
            spawn("scheduler", None, "MS_SCHED", "scheduler.log")
        for i in range(spec.local):
            rank = spec.global_rank(i)
            label = rank if rank is not None else i
            spawn(f"rank {label}", rank, "MS_WORKER", f"worker_{label}.log", i)
    except OSError as e:
        stop(procs, 0)
        raise UserError(f"cannot start the command: {e.strerror or e}", key="command",
                        fix="check the command") from None
    (log_dir / PROCS_FILE).write_text(json.dumps({
        "job_id": job_id, "command": argv, "spec": asdict(spec), "started": time.time(),
        "processes": [{"name": p.name, "rank": p.rank, "pid": p.popen.pid, "log": str(p.log)}
                      for p in procs]}, indent=1))
    status = log_dir / STATUS_FILE
    if status.exists():
        status.unlink()   # a previous job's outcome must not be read as this one's
    return procs


def stop(procs: list[Proc], grace_s: float) -> None:
    """SIGTERM every process group still running, then SIGKILL after `grace_s`."""
    alive = [p for p in procs if p.popen.poll() is None]
    for p in alive:
        _signal_group(p.popen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.popen.poll() is None]
        time.sleep(0.1)
    for p in alive:
        _signal_group(p.popen, signal.SIGKILL)
    for p in procs:
        try:
            p.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(popen: subprocess.Popen, sig) -> None:
    try:
        os.killpg(os.getpgid(popen.pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(spec: LaunchSpec, procs: list[Proc], *, out=None, poll_s: float = 0.2,
              scheduler_wait_s: float = 60.0, env: dict | None = None) -> LaunchResult:
    """Wait for the job. The first worker to fail stops all the others; the result names it.
    env: the base environment the workers were started with (None: ours)."""
    t0 = time.monotonic()
    workers = [p for p in procs if p.name != "scheduler"]
    scheduler = next((p for p in procs if p.name == "scheduler"), None)
    echo = None
    if out is not None and spec.tail_rank is not None:
        target = next((p for p in workers if p.rank == spec.tail_rank), None)
        if target is not None:
            echo = _Echo(target.log, out, quiet=quiet_echo(env))
            echo.start()
    interrupted = {"sig": None}

    def on_signal(signum, frame):
        interrupted["sig"] = signum

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        failed: Proc | None = None
        while True:
            if interrupted["sig"] is not None:
                stop(procs, spec.grace_s)
                return _result(130, f"interrupted ({signal.Signals(interrupted['sig']).name}): "
                                    "all workers stopped", None, spec, t0)
            done = [p for p in workers if p.popen.poll() is not None]
            failed = next((p for p in done if p.popen.returncode != 0), None)
            if failed is None and scheduler is not None and scheduler.popen.poll() not in (None, 0):
                failed = scheduler   # e.g. it could not bind the port or timed out building the cluster
            if failed is not None or len(done) == len(workers):
                break
            time.sleep(poll_s)
        if failed is not None:
            stop([p for p in procs if p is not failed], spec.grace_s)
            rc = failed.popen.returncode
            what = describe_exit(rc)
            code = rc if rc > 0 else 128 + (-rc)
            others = [p.name for p in workers if p is not failed]
            msg = (f"{failed.name} {what}; stopped " + (", ".join(others) if others else "nothing else")
                   + f". Last lines of {failed.log}:")
            return _result(code, msg, failed, spec, t0)
        if scheduler is not None:
            try:
                scheduler.popen.wait(timeout=scheduler_wait_s)
            except subprocess.TimeoutExpired:
                stop([scheduler], spec.grace_s)
            if scheduler.popen.returncode not in (0, None, -signal.SIGTERM, -signal.SIGKILL):
                return _result(1, f"every worker finished, but the scheduler "
                                  f"{describe_exit(scheduler.popen.returncode)}. Last lines of "
                                  f"{scheduler.log}:", scheduler, spec, t0)
        return _result(0, f"all {len(workers)} workers finished", None, spec, t0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if echo is not None:
            echo.stop.set()
            echo.join(timeout=5)


def _result(rc: int, message: str, failed: Proc | None, spec: LaunchSpec, t0: float) -> LaunchResult:
    res = LaunchResult(rc, message, failed.name if failed else None, str(failed.log) if failed else None,
                       tail_lines(failed.log, spec.tail_lines) if failed else [],
                       round(time.monotonic() - t0, 2))
    try:
        (Path(spec.log_dir) / STATUS_FILE).write_text(json.dumps(res.to_dict(), indent=1))
    except OSError:
        pass
    return res


def launch(spec: LaunchSpec, command: str | list[str], *, out=None, env: dict | None = None
           ) -> LaunchResult | int:
    """Run `command` as a distributed job. join: wait and return the LaunchResult; otherwise hand
    the job to a detached supervisor and return its pid."""
    argv = resolve_command(command)
    if not spec.join:
        return _detach(spec, argv, env)
    procs = start(spec, argv, env=env)
    return supervise(spec, procs, out=out, env=env)


def _detach(spec: LaunchSpec, argv: list[str], env: dict | None) -> int:
    log_dir = Path(spec.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    status = log_dir / STATUS_FILE
    if status.exists():
        status.unlink()
    payload = json.dumps({"spec": {**asdict(spec), "join": True, "tail_rank": None}, "argv": argv})
    with open(log_dir / "launcher.log", "w", encoding="utf-8") as f:
        p = subprocess.Popen([sys.executable, "-m", "petrun.parallel.launch", "--supervise", payload],
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ if env is None else env), start_new_session=True)
    return p.pid


def format_result(res: LaunchResult) -> str:
    lines = [res.message]
    lines += [f"  | {line}" for line in res.tail]
    return "\n".join(lines)


# --------------------------------------------------------------------------- python -m entry
def main(args: list[str] | None = None) -> int:
    """`python -m petrun.parallel.launch --mindformers ARGS…` (what msrun_launcher.sh runs) or
    `--supervise JSON` (the detached supervisor of a JOIN False job)."""
    args = list(sys.argv[1:] if args is None else args)
    try:
        if args[:1] == ["--supervise"]:
            data = json.loads(args[1])
            spec = LaunchSpec(**data["spec"])
            procs = start(spec, data["argv"])
            res = supervise(spec, procs)
            print(format_result(res), flush=True)
            return res.rc
        if args[:1] == ["--mindformers"]:
            spec, command = parse_mindformers_args(args[1:])
            if spec.worker_num == 1:
                # MindFormers' script refuses one worker (and exits 0): use the command directly.
                print("WORKER_NUM is 1: a single process needs no launcher; run the command "
                      f"directly: {command}", flush=True)
                return 0
            argv = resolve_command(command)
            if not spec.join:
                pid = _detach(spec, argv, None)
                print(f"started {spec.local} workers in the background (supervisor pid {pid}); "
                      f"logs in {spec.log_dir}/worker_N.log, outcome in {spec.log_dir}/{STATUS_FILE}",
                      flush=True)
                return 0
            res = supervise(spec, start(spec, argv), out=sys.stdout)
            print(format_result(res), file=sys.stderr if res.rc else sys.stdout, flush=True)
            return res.rc
        print("usage: python -m petrun.parallel.launch --mindformers " + MF_USAGE[len("bash scripts/msrun_launcher.sh "):],
              file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
