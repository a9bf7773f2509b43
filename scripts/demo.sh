#!/usr/bin/env bash
# Quickstart 1: create .venv if needed, install petrun, tokenize the bundled alpaca-style data into
# MindRecord (as MindFormers' alpaca_converter + llama_preprocess would), run a tiny LoRA finetune.
# Extra arguments are passed to `petrun finetune` (e.g. runner_config.epochs=1). Each run of the
# demo starts afresh: --overwrite replaces the previous demo run in output/ (checkpoints and
# metrics, as a set) instead of mixing with it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
DATA=output/demo_data/alpaca_demo_seq256.mindrecord
.venv/bin/petrun data prepare alpaca --input data/demo/alpaca_demo.json --output "$DATA" \
    --config configs/llama2/lora_llama2_tiny.yaml --overwrite
exec .venv/bin/petrun finetune --config configs/llama2/lora_llama2_tiny.yaml \
    --train_dataset_dir "$DATA" --overwrite "$@"
