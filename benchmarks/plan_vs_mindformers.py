"""The planner against MindFormers' published figures for its own configs (issue 20, item 3).

    .venv/bin/python benchmarks/plan_vs_mindformers.py [--configs ../shared/mindformers-configs]

For each config a MindFormers model card reports throughput for, `petrun.plan.estimate` of that
very file (unchanged, as petrun loads it: its device_target, layout, dtypes, switches) gives the
planned tokens/s per device and peak memory per device. The cards publish tokens/s/p only; no
card publishes a memory figure, so the memory column can only be set against the file's own
max_device_memory, the budget the published run fitted in. Recompute is counted as the file's
recompute_config makes petrun's model (and MindFormers') apply it. Published figures (commit of each
card in PUBLISHED) were read from github mindspore-lab/mindformers docs/model_cards/. No
MindSpore, no device: this is arithmetic on the configs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from petrun.config import load_config  # noqa: E402
from petrun.plan import estimate  # noqa: E402
from petrun.plan.device import parse_size  # noqa: E402

GiB = 2 ** 30
R11 = "r1.1.0 (6db677bc) docs/model_cards/{}.md"
R13 = "r1.3.0 (f90b5b9c) docs/model_cards/{}.md"
# (config path under the configs folder, published tokens/s/p, card, hardware the card names)
PUBLISHED = [
    ("r1.1.0/configs/llama2/lora_llama2_7b.yaml", 5217, R11.format("llama2"), "Atlas 800T A2"),
    ("r1.1.0/configs/llama2/finetune_llama2_7b.yaml", 4820, R11.format("llama2"), "Atlas 800T A2"),
    ("r1.1.0/configs/llama2/lora_llama2_13b.yaml", 2322, R11.format("llama2"), "Atlas 800T A2"),
    ("r1.1.0/configs/llama2/finetune_llama2_13b.yaml", 1883, R11.format("llama2"),
     "Atlas 800T A2"),
    ("r1.3.0/configs/llama2/finetune_llama2_7b.yaml", 3484, R13.format("llama2"), "Atlas 800T A2"),
    ("r1.3.0/configs/llama2/lora_llama2_13b.yaml", 2193, R13.format("llama2"), "Atlas 800T A2"),
    ("r1.3.0/configs/llama2/finetune_llama2_13b_bf16.yaml", 1691, R13.format("llama2"),
     "Atlas 800T A2"),
    ("r1.1.0/configs/glm2/finetune_glm2_6b_fp16.yaml", 815.2, R11.format("glm2"), "Atlas 800"),
    ("r1.1.0/configs/glm2/lora_glm2_6b_fp16.yaml", 3243.7, R11.format("glm2"), "Atlas 800"),
    ("r1.1.0/configs/glm2/run_glm2_6b_ptuning2.yaml", 4150.5, R11.format("glm2"), "Atlas 800"),
]


def row(base: Path, rel: str, published: float, card: str, hardware: str) -> dict:
    cfg = load_config(base / rel, [])
    est = estimate(cfg)
    lay = est.layout
    budget = parse_size(cfg.get("context.max_device_memory"))
    per_device = est.tokens_per_s / lay.devices
    return {"config": rel, "card": card, "hardware": hardware, "published": published,
            "planned": per_device, "gap": per_device / published - 1,
            "layout": lay.describe(), "batch": est.batch_size, "seq": est.seq_length,
            "fa": lay.flash_attention,
            # recompute_config asked for recompute that the model (as MindFormers') applies nowhere
            "recompute_noop": lay.recompute_requested and not any(
                p.any for p in lay.recompute_layers),
            "peak": est.peak, "budget": budget, "pet": est.pet_type or "full"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=Path, default=ROOT.parent / "shared" / "mindformers-configs")
    args = ap.parse_args(argv)
    print("| config | method | layout | batch × seq | FA | published tokens/s/p | planned "
          "tokens/s/p | gap | planned peak GiB/device | max_device_memory |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---|")
    for rel, published, card, hardware in PUBLISHED:
        r = row(args.configs, rel, published, card, hardware)
        budget = f"{r['budget'] / GiB:.0f} GiB" if r["budget"] else "-"
        asked = " (recompute asked, selects nothing)" if r["recompute_noop"] else ""
        print(f"| {rel} | {r['pet']} | {r['layout']}{asked} | {r['batch']} × {r['seq']} | "
              f"{'yes' if r['fa'] else 'no'} | {published:,.0f} | {r['planned']:,.0f} | "
              f"{r['gap']:+.0%} | {r['peak'] / GiB:.1f} | {budget} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
