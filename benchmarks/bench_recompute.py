"""Does recompute_config save memory on CPU? Peak RSS of real `petrun finetune` runs with and
without recompute (issue 20), beside what the planner predicts for each.

    .venv/bin/python benchmarks/bench_recompute.py            # ~3 min on 2 cores

One Llama shape where the activations dominate (hidden 256, 8 layers, seq 1024, batch 2, vocab
1000, LoRA r8 on wq/wk/wv/wo, fp32: the attention scores alone are 8 layers × 8 heads × 1024² ×
4 B × 2 = 512 MiB before MindSpore's CPU overhead), run three ways: no recompute,
select_recompute (MindFormers' Llama set: SiLU, the gate·up product and, without flash
attention, rotary and the score ops), and full recompute of every layer. Each run is the real
CLI on synthetic data (plan_vs_measured.py's harness, STEPS steps), measured peak = the child's
ru_maxrss from wait4. Prints a Markdown table for benchmarks/RESULTS.md. The planner counts no
recompute saving on CPU because of what this measures (plan/layout.py recompute_applied).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plan_vs_measured import LORA_LLAMA, Run, llama, make_config, measure  # noqa: E402

MiB = 2 ** 20
SHAPE = llama(256, 8, 8, 8, 1000, 1024, 64)
VARIANTS = [
    ("none", {}),
    ("select_recompute", {"recompute_config.select_recompute": True}),
    ("recompute (every layer)", {"recompute_config.recompute": True}),
]


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="petrun-recompute-") as tmp:
        work = Path(tmp)
        for i, (label, extra) in enumerate(VARIANTS):
            run = Run(f"recompute-{i}", "check", SHAPE, 2, LORA_LLAMA, extra=dict(extra))
            config = make_config(run, work)
            got = measure(run, config, work)
            rows.append((label, got))
            print(f"{label}: {got['peak_rss'] / MiB:,.0f} MiB, step {got['median_step_s']:.2f} s",
                  file=sys.stderr)
    base = rows[0][1]["peak_rss"]
    print("| recompute_config | measured peak RSS MiB | vs none | median step s |")
    print("|---|---:|---:|---:|")
    for label, got in rows:
        print(f"| {label} | {got['peak_rss'] / MiB:,.0f} | {got['peak_rss'] / base - 1:+.0%} | "
              f"{got['median_step_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
