"""Data-parallel LoRA training driver for tests/parallel/test_dp_launch.py.

Runs the pieces the finetune recipe will use under use_parallel (setup_context → init_distributed,
data_shard, grad_reducer) with petrun's real model, LoRA, loader, optimizer and TrainStep, so the
test can prove that DP under `petrun launch` gives identical adapters on every rank, equal to one
process on the same global batch. Once the recipe is rank-aware the test can run
`petrun finetune … --use_parallel True` instead (the lead switches it).

    python tests/parallel/dp_driver.py --data D.jsonl --out OUT --batch 2 --steps 3 [--parallel]
Writes OUT/rank_<r>/adapter.ckpt and OUT/rank_<r>/losses.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, required=True, help="per-rank batch")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to idle after each step")
    args = ap.parse_args()

    from petrun.config import load_config
    cfg = load_config(str(CONFIG), [
        f"use_parallel={args.parallel}", "parallel.parallel_mode=0", "parallel.gradients_mean=True",
        f"model.model_config.seq_length={args.seq}", f"model.model_config.max_position_embedding={args.seq}",
        "load_checkpoint=", "context.mode=0"])

    from petrun.parallel.context import data_shard, grad_reducer, init_distributed, set_seed, setup_context
    target = setup_context(cfg)            # init() happens here when use_parallel
    rank, world = init_distributed(cfg)    # cached: (rank, world)
    # Only now may the process write anything: the scheduler never gets here.
    import mindspore as ms
    from mindspore import ops

    from petrun.api import build_model
    from petrun.data.loader import build_dataset
    from petrun.train.optim import build_optimizer
    from petrun.train.step import TrainStep

    class DPTrainStep(TrainStep):
        """TrainStep whose gradients are reduced over the data-parallel ranks first."""

        def __init__(self, network, optimizer, reducer, **kw):
            super().__init__(network, optimizer, **kw)
            self.reducer = reducer
            self.use_reducer = reducer is not None

        def scaled_grads(self, input_ids, labels):
            loss = self.network(input_ids, labels)
            sens = ops.cast(self.loss_scale, loss.dtype)
            grads = self.grad(self.network, self.weights)(input_ids, labels, sens)
            if self.use_reducer:
                grads = self.reducer(grads)
            inv = ops.cast(1.0 / self.loss_scale, ms.float32)
            return loss, tuple(ops.cast(g, ms.float32) * inv for g in grads)

    set_seed(0)
    model = build_model(cfg, device_target=target)
    trainable = list(model.trainable_params())
    shards, shard_id = data_shard(cfg)
    ds = build_dataset(args.data, seq_length=args.seq, batch_size=args.batch, shuffle=True, seed=0,
                       num_shards=shards, shard_id=shard_id)
    import numpy as np
    lr = np.full(args.steps, 5e-3, np.float32)
    optimizer = build_optimizer(trainable, cfg.get("optimizer") or {}, lr)
    step = DPTrainStep(model, optimizer, grad_reducer(optimizer.parameters), scale_value=1.0,
                       scale_update=None, clip_norm=1.0, use_clip=True)
    step.set_train(True)
    out = Path(args.out) / f"rank_{rank}"
    out.mkdir(parents=True, exist_ok=True)
    losses = []
    for i, (ids, labels) in enumerate(ds.create_tuple_iterator(num_epochs=1)):
        if i == args.steps:
            break
        loss, _, _, norm = step(ids, labels)
        losses.append(float(loss.asnumpy()))
        print(f"rank {rank}/{world} step {i + 1} loss {losses[-1]:.6f} norm {float(norm.asnumpy()):.6f}",
              flush=True)
        if args.sleep:
            time.sleep(args.sleep)
    ms.save_checkpoint(trainable, str(out / "adapter.ckpt"))
    (out / "losses.json").write_text(json.dumps({"rank": rank, "world": world, "losses": losses}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
