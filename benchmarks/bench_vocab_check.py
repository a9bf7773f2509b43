"""Cost of the per-step vocabulary check on streamed (MindRecord) batches.

    .venv/bin/python benchmarks/bench_vocab_check.py [--batch 8] [--width 257] [--n 2000]

Times DataSource.check_batch's work (copy both columns to the host, max over ids) on MindSpore
tensors the size of one training batch; compare with the median step time of the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import mindspore as ms

    from petrun.data.loader import check_token_ids

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=257)
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    batch = (ms.Tensor(rng.integers(0, 500, (a.batch, a.width), dtype=np.int32)),
             ms.Tensor(rng.integers(-100, 500, (a.batch, a.width), dtype=np.int32)))
    t = time.perf_counter()
    for _ in range(a.n):
        check_token_ids({c: x.asnumpy() for c, x in zip(("input_ids", "labels"), batch)}, 512,
                        "bench", "train_dataset.data_loader.dataset_dir")
    print(f"check of one [{a.batch}, {a.width}] batch: "
          f"{(time.perf_counter() - t) / a.n * 1e6:.1f} us (mean of {a.n})")


if __name__ == "__main__":
    main()
