"""A/B of two petrun settings on the same shape, interleaved (A B B A A B ...), through the real CLI.

    .venv/bin/python benchmarks/ab_petrun.py --shape small --rounds 2 --steps 6 \
        --b "context.jit_config={jit_level: O0}"
    .venv/bin/python benchmarks/ab_petrun.py --shape tiny --b-env MS_COMPILER_CACHE_ENABLE=1

Each side is `petrun finetune` on the YAML bench_vs_torch.py generates for --shape, plus the
side's overrides (--a / --b, space-separated) and environment (--a-env / --b-env K=V,...).
Prints each run (median step of steps 3.., first step incl. compile, peak RSS, load average)
and each side's best median and best first step; a code change is compared by running the
script once per checkout with the same arguments (or with PETRUN_* switches where they exist).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_torch import SHAPES, run_petrun, tokens  # noqa: E402


def env_of(text: str) -> dict:
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--a", default="")
    ap.add_argument("--b", default="")
    ap.add_argument("--a-env", default="")
    ap.add_argument("--b-env", default="")
    args = ap.parse_args()
    s = SHAPES[args.shape]
    sides = {"A": (args.a, env_of(args.a_env)), "B": (args.b, env_of(args.b_env))}
    best: dict = {}
    print(f"A: {args.a!r} {args.a_env!r}\nB: {args.b!r} {args.b_env!r}\nload {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in (("A", "B") if r % 2 == 0 else ("B", "A")):
                over, env = sides[side]
                extra = [w for w in over.split(" ") if w] if "{" not in over else [over]
                res = run_petrun(args.shape, s, args.steps, Path(tmp), extra, env)
                print(f"  round {r + 1} {side}: median {res['median_step_s'] * 1000:.0f} ms, first "
                      f"{res['first_step_s']:.1f} s, rss {res['peak_rss'] / 2**20:,.0f} MiB, loss0 "
                      f"{res['loss0']:.5f}, load {os.getloadavg()[0]:.2f}", flush=True)
                b = best.setdefault(side, {"median": 1e9, "first": 1e9})
                b["median"] = min(b["median"], res["median_step_s"])
                b["first"] = min(b["first"], res["first_step_s"])
    for side, b in best.items():
        print(f"{side}: best median {b['median'] * 1000:.0f} ms ({tokens(s) / b['median']:,.0f} tok/s), "
              f"best first step {b['first']:.1f} s")
    print(f"B/A speed: {best['A']['median'] / best['B']['median']:.3f}×; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
