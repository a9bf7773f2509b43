#!/usr/bin/env bash
# Quickstart 1: create .venv if needed, install petrun, run a tiny LoRA finetune on bundled data.
# Extra arguments are passed to `petrun finetune` (e.g. runner_config.epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec .venv/bin/petrun finetune --config configs/llama2/lora_llama2_tiny.yaml "$@"
