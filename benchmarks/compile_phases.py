"""Where the cold first training step's time goes: model build, graph compile (split into
MindSpore's own phases) and the first execution; and A/B of compile levers (issue 16).

    # one run, with MindSpore's compile profile (frontend actions and passes, backend stages)
    .venv/bin/python benchmarks/compile_phases.py --shape small --profile
    # A/B in one sitting: fresh process per run, sides alternate, best of each
    .venv/bin/python benchmarks/compile_phases.py --shape small --ab base strict --rounds 2

Every run builds what benchmarks/ab_step.py builds (bench_vs_torch.py's YAML for --shape, the
model, AdamW, petrun's TrainStep) with PETRUN_COMPILE_CACHE=0, then times `step.compile(ids,
ids)` (parse, type inference, optimizer passes, backend kernel graph) apart from the first call
(memory, first execution) and a second call (a plain step). --profile turns on MindSpore 2.10's
own counters: compile_config.COMPILE_PROFILE (frontend actions, per pass) and
MS_DEV_RUNTIME_CONF=compile_statistics:True (backend: [PROF] lines). They cost a little time.

Variants (combine with '+', e.g. strict+no-clip); the ones marked * change what is computed
and exist only to measure what a part of the graph costs to compile:
  base                  as the CLI runs it
  strict                ms.set_context(jit_syntax_level=ms.STRICT) (default LAX)
  cc:NAME=VALUE         mindspore.graph._parse.compile_config.NAME = VALUE (before compile)
  env:NAME=VALUE        environment variable for the child process
  layers:N            * num_layers N instead of the shape's
  part:forward|grad   * compile the loss forward only / loss + gradients (no norm, clip, AdamW)
  plain-attention-grad  the attention core without its hand-written backward (autodiff)
  no-branch             update applied unconditionally (ops.depend) instead of `if not overflow:`
  genexpr-tail          the step's cast, norm and clip as generator expressions over the
                        gradients, as before HyperMap (benchmarks/ab_step.py's toggle)
  no-clip             * no gradient clipping
  no-lora-dropout     * LoRA dropout p=0 (nn.Dropout(p=0) is an identity: the op disappears)
  no-lora             * the LoRA wrappers replaced by their base Linear, whose weights train
  lazy-inline           ms.lazy_inline on the decoder layer (compile the layer once)
  lazy-front            the same with policy="front" (inlined again in the frontend)
  lazy-parts            lazy_inline(policy="front") on the layer's random-free parts: the attention
                        core, SwiGLU, RMSNorm, ApplyRotary (LoRA and its dropout stay per layer)
  transpose-heads       the attention cells split/merge heads by Transpose (gather_heads off)
  jit:LEVEL             ms.set_context(jit_config={"jit_level": LEVEL})
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _unwrap_lora(model) -> int:
    """Replace every LoRALinear by its base Linear and train the base weights instead."""
    n = 0
    for _, cell in list(model.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if type(child).__name__ == "LoRALinear":
                setattr(cell, name, child.base)
                n += 1
    for p in model.get_parameters():
        p.requires_grad = p.name.endswith(("wq.weight", "wk.weight", "wv.weight", "wo.weight"))
    return n


def worker(args) -> dict:
    t_start = time.perf_counter()
    variants = set(args.variant.split("+"))
    os.environ["PETRUN_COMPILE_CACHE"] = "0"
    import mindspore as ms
    import numpy as np
    from mindspore import nn
    from bench_vs_torch import SHAPES, THREADS, petrun_config
    from mindspore.graph._parse import compile_config
    if args.profile:
        compile_config.COMPILE_PROFILE = "1"
    for v in variants:
        if v.startswith("cc:"):
            k, val = v[3:].split("=", 1)
            setattr(compile_config, k, val)
    ms.set_context(mode=ms.GRAPH_MODE)
    for v in variants:
        if v.startswith("jit:"):
            ms.set_context(jit_config={"jit_level": v[4:]})
    if "strict" in variants:
        ms.set_context(jit_syntax_level=ms.STRICT)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    import petrun
    from petrun.models.registry import arch_entry
    from petrun.train.optim import build_optimizer
    from petrun.train.step import TrainStep
    t_import = time.perf_counter()

    s = dict(SHAPES[args.shape])
    for v in variants:
        if v.startswith("layers:"):
            s["layers"] = int(v.split(":")[1])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = petrun.load_config(str(petrun_config(args.shape, s, 4, Path(tmp), [])))
    extra = arch_entry(cfg.get("model.arch.type")).extra_tokens
    ids = ms.Tensor(np.random.default_rng(0).integers(3, s["vocab"], (s["batch"], s["seq"] + extra)),
                    ms.int32)
    if "lazy-inline" in variants or "lazy-front" in variants:
        from petrun.models import llama
        policy = "front" if "lazy-front" in variants else None
        llama.LlamaDecodeLayer.__init__ = ms.lazy_inline(llama.LlamaDecodeLayer.__init__,
                                                         policy=policy)
    if "lazy-parts" in variants:
        from petrun.models import layers
        for cls in (layers.DotProductAttention, layers.SwiGLU, layers.RMSNorm, layers.ApplyRotary):
            cls.__init__ = ms.lazy_inline(cls.__init__, policy="front")
    ms.set_seed(0)
    model = petrun.build_model(cfg)
    for _, cell in model.cells_and_names():
        kind = type(cell).__name__
        if "plain-attention-grad" in variants and kind == "DotProductAttention":
            cell.fast_core = None
        if "transpose-heads" in variants and getattr(cell, "gather_heads", False):
            cell.gather_heads = False
        if "no-lora-dropout" in variants and kind == "LoRALinear":
            cell.lora_dropout = nn.Dropout(p=0.0)
    if "no-lora" in variants:
        _unwrap_lora(model)
    model.set_train(True)
    t_build = time.perf_counter()
    opt = build_optimizer(list(model.trainable_params()), cfg.get("optimizer") or {},
                          np.full(100, 1e-4, np.float32))
    t_opt = time.perf_counter()

    part = next((v.split(":")[1] for v in variants if v.startswith("part:")), "step")
    if part == "forward":
        cell = model
    else:
        base = TrainStep
        if "no-branch" in variants:
            from ab_step import _unbranched
            base = _unbranched(TrainStep)
        if "genexpr-tail" in variants:
            from ab_step import _genexpr_tail
            base = _genexpr_tail(TrainStep)
        if part == "grad":
            class GradOnly(TrainStep):
                def construct(self, *inputs):
                    return self.scaled_grads(*inputs)
            base = GradOnly
        cell = base(model, opt, 1.0, None, 1.0, "no-clip" not in variants)
        cell.set_train(True)
    c0 = time.process_time()
    cell.compile(ids, ids)
    t_compile, compile_cpu = time.perf_counter(), time.process_time() - c0
    out = cell(ids, ids)
    loss = float((out if part == "forward" else out[0]).asnumpy())
    norm = float(out[3].asnumpy()) if part == "step" else None
    t_first = time.perf_counter()
    out = cell(ids, ids)
    loss2 = float((out if part == "forward" else out[0]).asnumpy())
    t_second = time.perf_counter()
    return {"variant": args.variant, "loss": loss, "norm": norm, "loss2": loss2,
            "import_s": t_import - t_start,
            "build_s": t_build - t_import, "opt_s": t_opt - t_build,
            "compile_s": t_compile - t_opt, "compile_cpu_s": compile_cpu, "first_call_s": t_first - t_compile,
            "first_step_s": t_first - t_opt, "second_step_s": t_second - t_first}


PROF_LINE = re.compile(r"^\[PROF\](\S+) costs ([0-9.]+) msec")
TOP_ACTION = re.compile(r"^\[([A-Za-z_][\w.-]*)\]: ([0-9.e+-]+)")
OPT_PASS = re.compile(r"^ {4}\[([A-Za-z_][\w.-]*)\]: ([0-9.e+-]+)")
PASS_TOTAL = re.compile(r"^ *([0-9.]+)% : +([0-9.]+)s : +(\d+): (\S+)")


def parse_profile(text: str) -> dict:
    """COMPILE_PROFILE's tree (top-level actions, the passes under them) and its per-pass totals;
    the backend's [PROF] stages (summed over the graphs compiled)."""
    top, second, passes, backend = {}, {}, {}, {}
    for line in text.splitlines():
        if m := TOP_ACTION.match(line):
            top[m[1]] = top.get(m[1], 0.0) + float(m[2])
        elif m := OPT_PASS.match(line):
            second[m[1]] = second.get(m[1], 0.0) + float(m[2])
        elif m := PASS_TOTAL.match(line):
            passes[m[4]] = passes.get(m[4], 0.0) + float(m[2])
        elif m := PROF_LINE.match(line.strip()):
            backend[m[1]] = backend.get(m[1], 0.0) + float(m[2]) / 1000
    return {"frontend_actions": top, "second_level": second, "passes": passes, "backend": backend}


def run(args, variant: str) -> dict:
    from bench_vs_torch import run_child
    env = {}
    for v in variant.split("+"):
        if v.startswith("env:"):
            k, val = v[4:].split("=", 1)
            env[k] = val
    if args.profile:
        env["MS_DEV_RUNTIME_CONF"] = "compile_statistics:True"
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--worker", "--shape", args.shape, "--variant", variant]
    if args.profile:
        cmd.append("--profile")
    out, rss, wall, other = run_child(cmd, ROOT, env)
    res = json.loads([ln for ln in out.splitlines() if ln.startswith("{\"variant\"")][-1])
    res.update(load=load, other_cores=other, wall_s=wall, peak_rss_mib=rss / 2**20)
    if args.profile:
        res["profile"] = parse_profile(out)
        if args.keep_log:
            Path(args.keep_log).write_text(out, encoding="utf-8")
    return res


def show(res: dict) -> None:
    print(f"{res['variant']:<32} compile {res['compile_s']:6.1f} s (cpu {res['compile_cpu_s']:5.1f})  first call {res['first_call_s']:5.1f} s"
          f"  first step {res['first_step_s']:6.1f} s  second {res['second_step_s']:5.2f} s  build "
          f"{res['build_s']:4.1f} s  import {res['import_s']:4.1f} s  loss {res['loss']:.6f} "
          f"{res['loss2']:.6f} norm {res['norm']}  "
          f"load {res['load']:.2f}, other cores {res['other_cores']:.2f}", flush=True)
    prof = res.get("profile")
    if prof:
        for title, d, n in (("frontend actions", prof["frontend_actions"], 12),
                            ("inside actions", prof["second_level"], 12),
                            ("passes (all calls)", prof["passes"], 15), ("backend", prof["backend"], 12)):
            items = sorted(d.items(), key=lambda x: -x[1])[:n]
            print(f"  {title}: " + ", ".join(f"{k} {v:.2f}" for k, v in items))


def main() -> int:
    from bench_vs_torch import SHAPES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--variant", default="base")
    ap.add_argument("--ab", nargs="+", metavar="VARIANT", help="variants to alternate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="MindSpore's compile counters")
    ap.add_argument("--keep-log", help="write the (last) child's full output here")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    variants = args.ab or [args.variant]
    results = {v: [] for v in variants}
    for r in range(args.rounds if args.ab else 1):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            res = run(args, v)
            results[v].append(res)
            show(res)
    if args.ab:
        print("\nbest of each (first step = compile + first call):")
        for v, rs in results.items():
            best = min(rs, key=lambda x: x["first_step_s"])
            print(f"{v:<32} first step best {best['first_step_s']:.1f} s (all: "
                  f"{', '.join(format(x['first_step_s'], '.1f') for x in rs)}), compile best "
                  f"{min(x['compile_s'] for x in rs):.1f} s (cpu {min(x['compile_cpu_s'] for x in rs):.1f}), second median "
                  f"{statistics.median(x['second_step_s'] for x in rs):.2f} s, loss {best['loss']:.6f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
