#!/usr/bin/env bash
# Pretrain the tiny Llama2 base model that the demo finetunes (data/demo/llama2_tiny_base.ckpt),
# with petrun itself: a full-parameter `petrun train` on data/demo/pretrain_demo_seq256.jsonl
# (made by scripts/make_demo_data.py), then the final checkpoint is copied into data/demo/.
# Deterministic for a given machine; takes a few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
.venv/bin/petrun train --config configs/llama2/lora_llama2_tiny.yaml \
  '~model.model_config.pet_config' load_checkpoint= \
  --train_dataset_dir data/demo/pretrain_demo_seq256.jsonl --output_dir "$out" \
  runner_config.epochs=8 lr_schedule.learning_rate=3e-3 lr_schedule.lr_end=1e-4 \
  lr_schedule.warmup_ratio=0.05 callbacks.0.per_print_times=20 \
  callbacks.1.prefix=llama2_tiny_base callbacks.1.save_checkpoint_steps=100000
final=$(ls -t "$out"/checkpoint/rank_0/llama2_tiny_base_rank_0-*.ckpt | head -1)
tmp=data/demo/.llama2_tiny_base.ckpt.partial
cp "$final" "$tmp" && chmod 644 "$tmp" && mv "$tmp" data/demo/llama2_tiny_base.ckpt
echo "wrote data/demo/llama2_tiny_base.ckpt from $final"
