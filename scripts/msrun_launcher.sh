#!/usr/bin/env bash
# Distributed launch with MindFormers' positional arguments and defaults
# (reference/mindformers.md §3.1); petrun starts and supervises the processes itself
# (petrun/parallel/launch.py, shared with `petrun launch`).
#
#   bash scripts/msrun_launcher.sh "COMMAND"                      # 8 workers on this node
#   bash scripts/msrun_launcher.sh "COMMAND" WORKER_NUM
#   bash scripts/msrun_launcher.sh "COMMAND" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
#   bash scripts/msrun_launcher.sh "COMMAND" WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT \
#                                  NODE_RANK LOG_DIR JOIN CLUSTER_TIME_OUT   # several nodes
#
# Defaults: WORKER_NUM 8, LOCAL_WORKER = WORKER_NUM, MASTER_ADDR 127.0.0.1, MASTER_PORT 8118,
# NODE_RANK 0, LOG_DIR output/msrun_log, JOIN False, CLUSTER_TIME_OUT 7200.
# COMMAND is "petrun finetune --config … --use_parallel True" (run as python -m petrun),
# MindFormers' "run_mindformer.py --config … --run_mode finetune …" (run as petrun run: the verb
# --run_mode names, with run_mindformer.py's flags), a script "x.py …", or "python -m module …".
# JOIN False (the default) returns at once, like MindFormers: a background supervisor keeps the
# job, stops every worker if one fails and writes LOG_DIR/launch_status.json at the end. Follow
# LOG_DIR/worker_0.log. JOIN True waits, echoes rank 0's log and exits with the job's status.
# MF_LOG_SUFFIX, if set, is appended to LOG_DIR as _<suffix>.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PETRUN_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
  else
    PY="$(command -v python3 || command -v python)"
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ulimit -u unlimited 2>/dev/null || true
exec "$PY" -m petrun.parallel.launch --mindformers "$@"
