"""petrun vs Hugging Face transformers + PEFT on PyTorch (eager): the same finetune, side by side.

    .venv/bin/python benchmarks/bench_vs_torch.py                       # all shapes, 2 rounds
    .venv/bin/python benchmarks/bench_vs_torch.py --shapes tiny,small --rounds 3 --steps 8
    .venv/bin/python benchmarks/bench_vs_torch.py --shapes small --no-decode --json out.json

Same work on both sides: the same architecture and sizes, the same LoRA (the seed's Llama2
pet_config `.*wq|.*wk|.*wv|.*wo`, rank 16, alpha 16, dropout 0.05 ↔ PEFT q/k/v/o_proj), fp32,
AdamW, gradient clipping at 1.0, batch × seq of random token ids, 2 threads on each side.

- petrun runs as a user runs it: `python -m petrun finetune --config <generated YAML>` in a child
  process (pre-flight, data pipeline and all); step times come from its metrics.jsonl
  (step_time_s; the first includes the graph compile), peak RSS from wait4() of the child.
  Threads: context.runtime_num_threads=2.
- PyTorch runs in its own child (so each side's RSS is its own): transformers'
  LlamaForCausalLM / GlmForCausalLM (ChatGLM2's architecture, as tests/models/test_parity_glm2.py
  uses it) / GPT2LMHeadModel with default attention (sdpa) + peft LoraConfig, a plain loop
  (forward with labels, backward, clip_grad_norm_, AdamW step), torch.set_num_threads(2).
- Sides alternate for --rounds rounds (the order flips every round); each side keeps its best
  median step (median of steps after the first two), so other load on the machine hurts both
  alike. Each run also records the CPU everything else used meanwhile ("other", in cores: the
  machine's busy time from /proc/stat less the child's own); above BUSY_OTHER the table says BUSY.
- Decoding: petrun.infer.generate (what `petrun predict` runs: fixed-size KV cache, one compiled
  graph per step) vs transformers' generate(use_cache=True), greedy, same model shape, random
  weights, 1 × 32 prompt → 128 new tokens, best of 3 after one untimed run, each in a child.

Differences that cannot be removed: ChatGLM2's q|k|v is one fused projection in petrun (LoRA r16
on it and on dense) while transformers' Glm has q/k/v_proj (LoRA r16 on each and on o_proj);
GPT-2's LoRA is on dense1/2/3 (petrun refuses projection) vs c_attn (fused) in PEFT. The work
differs by a few rank-16 matmuls, well under 1% of a step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_YAML = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
BUSY_OTHER = 0.25  # cores used by other processes while a child ran: above this the figures are busy
THREADS = 2
LORA = {"lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.05}


def llama(h, layers, heads, kv, ffn, vocab, seq, batch, lora=True):
    return {"family": "llama", "hidden": h, "layers": layers, "heads": heads, "kv": kv, "ffn": ffn,
            "vocab": vocab, "seq": seq, "batch": batch, "lora": lora}


SHAPES = {
    # the demo config's model (configs/llama2/lora_llama2_tiny.yaml), batch 8 × 256
    "tiny": llama(64, 2, 4, 2, 192, 512, 256, 8),
    # reference/feasibility.md §1b's 58M Llama
    "small": llama(512, 8, 8, 8, 1376, 32000, 512, 2),
    "mid-gqa": llama(768, 6, 12, 4, 2048, 32000, 384, 2),
    "glm2-small": {**llama(512, 8, 8, 2, 1376, 32000, 512, 2), "family": "glm2"},
    "gpt2-small": {**llama(512, 8, 8, 8, 2048, 32000, 512, 2), "family": "gpt2"},
    "small-full": llama(512, 8, 8, 8, 1376, 32000, 512, 2, lora=False),
}
DECODE_SHAPE = "small"


# ============================================================================ petrun side
def petrun_model(s: dict) -> tuple[str, dict, dict | None]:
    """(arch, model_config, pet_config) of a shape."""
    if s["family"] == "llama":
        mc = {"type": "LlamaConfig", "seq_length": s["seq"], "max_position_embedding": s["seq"],
              "hidden_size": s["hidden"], "num_layers": s["layers"], "num_heads": s["heads"],
              "n_kv_heads": s["kv"], "intermediate_size": s["ffn"], "vocab_size": s["vocab"],
              "compute_dtype": "float32", "param_init_type": "float32",
              "rotary_dtype": "float32", "use_flash_attention": False}
        return "LlamaForCausalLM", mc, {"pet_type": "lora", **LORA,
                                        "target_modules": ".*wq|.*wk|.*wv|.*wo"}
    if s["family"] == "glm2":
        mc = {"type": "ChatGLM2Config", "seq_length": s["seq"], "hidden_size": s["hidden"],
              "num_layers": s["layers"], "num_attention_heads": s["heads"],
              "kv_channels": s["hidden"] // s["heads"], "multi_query_group_num": s["kv"],
              "ffn_hidden_size": s["ffn"], "padded_vocab_size": s["vocab"],
              "compute_dtype": "float32", "param_init_type": "float32"}
        return "ChatGLM2ForConditionalGeneration", mc, {
            "pet_type": "lora", **LORA, "target_modules": ".*query_key_value|dense$"}
    mc = {"type": "GPT2Config", "seq_length": s["seq"], "hidden_size": s["hidden"],
          "num_layers": s["layers"], "num_heads": s["heads"], "vocab_size": s["vocab"],
          "compute_dtype": "float32", "param_init_type": "float32"}
    return "GPT2LMHeadModel", mc, {"pet_type": "lora", **LORA,
                                   "target_modules": ".*dense1|.*dense2|.*dense3"}


def petrun_config(name: str, s: dict, steps: int, work: Path, extra: list[str]) -> Path:
    import yaml
    sys.path.insert(0, str(ROOT))
    from petrun.config.load import load_layered
    from petrun.models.registry import arch_entry

    data, _ = load_layered(BASE_YAML)
    arch, mc, pet = petrun_model(s)
    if s["lora"]:
        mc["pet_config"] = pet
    data["model"] = {"arch": {"type": arch}, "model_config": mc}
    width = s["seq"] + arch_entry(arch).extra_tokens
    dataset = work / f"data_{width}_{s['vocab']}.jsonl"
    if not dataset.exists():
        rng = random.Random(0)
        with open(dataset, "w", encoding="utf-8") as f:
            for _ in range(max(32, s["batch"] * (steps + 2))):
                ids = [rng.randrange(3, s["vocab"]) for _ in range(width)]
                f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    data.update(load_checkpoint="", output_dir=str(work / f"out_{name}"), seed=0)
    data["runner_config"].update(batch_size=s["batch"], stop_step=steps, epochs=100)
    data["runner_wrapper"] = {**(data.get("runner_wrapper") or {}), "use_clip_grad": True,
                              "max_grad_norm": 1.0, "scale_sense": 1.0}
    data["optimizer"] = {"type": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.0}
    data["lr_schedule"] = {"type": "constant", "learning_rate": 1e-4}
    data["train_dataset"]["data_loader"]["dataset_dir"] = str(dataset)
    data["train_dataset"]["data_loader"]["shuffle"] = False
    data["processor"]["tokenizer"].pop("vocab_file", None)
    data["context"]["runtime_num_threads"] = THREADS
    data["callbacks"] = [{"type": "MFLossMonitor", "per_print_times": 1000},
                         {"type": "CheckpointMonitor", "prefix": name,
                          "save_checkpoint_steps": 100000, "keep_checkpoint_max": 1}]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _busy_jiffies() -> int:
    """CPU time all processes spent running, in clock ticks (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def run_child(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[str, int, float, float]:
    """Run to completion → (output, peak RSS bytes from wait4, wall seconds, other load).

    "Other load" is the CPU that everything except this child used while it ran, in cores: the
    machine's busy time (/proc/stat) minus the child's own (wait4's rusage), over the wall time.
    The load average cannot say this: it counts the benchmark's own two threads too."""
    t0, j0 = time.perf_counter(), _busy_jiffies()
    proc = subprocess.Popen(cmd, cwd=str(cwd), env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    machine = (_busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK")
    other = max(0.0, machine - usage.ru_utime - usage.ru_stime) / wall
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … failed:\n{out[-3000:]}")
    return out, usage.ru_maxrss * 1024, wall, other


def run_petrun(name: str, s: dict, steps: int, work: Path, extra: list[str],
               env: dict | None = None) -> dict:
    cfg = petrun_config(name, s, steps, work, extra)
    out_dir = work / f"out_{name}"
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    _, rss, wall, other = run_child([sys.executable, "-m", "petrun", "finetune", "--config",
                                     str(cfg), *extra], work, env)
    rows = [json.loads(line) for line in (out_dir / "log" / "rank_0" / "metrics.jsonl").open()]
    times = [r["step_time_s"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"first_step_s": times[0], "median_step_s": statistics.median(times[2:] or times[1:]),
            "peak_rss": rss, "wall_s": wall, "loss0": losses[0], "other_load": other}


# ============================================================================ torch side
def torch_model(s: dict):
    import torch
    import transformers as tf
    torch.manual_seed(0)
    if s["family"] == "llama":
        cfg = tf.LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                             intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                             num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                             max_position_embeddings=s["seq"], rms_norm_eps=1e-5,
                             tie_word_embeddings=False)
        return tf.LlamaForCausalLM(cfg), ["q_proj", "k_proj", "v_proj", "o_proj"]
    if s["family"] == "glm2":
        cfg = tf.GlmConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
                           num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                           num_key_value_heads=s["kv"], head_dim=s["hidden"] // s["heads"],
                           partial_rotary_factor=0.5, attention_bias=True, rms_norm_eps=1e-5,
                           max_position_embeddings=s["seq"], tie_word_embeddings=False,
                           pad_token_id=0)
        return tf.GlmForCausalLM(cfg), ["q_proj", "k_proj", "v_proj", "o_proj"]
    cfg = tf.GPT2Config(vocab_size=s["vocab"], n_positions=s["seq"], n_embd=s["hidden"],
                        n_layer=s["layers"], n_head=s["heads"], n_inner=s["ffn"])
    return tf.GPT2LMHeadModel(cfg), ["c_attn"]


def torch_train_model(s: dict):
    """torch_model with the seed's LoRA applied by PEFT (or left whole for full finetune), in
    train mode: what the torch side times."""
    model, targets = torch_model(s)
    if s["lora"]:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA["lora_rank"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
            target_modules=targets, fan_in_fan_out=s["family"] == "gpt2", task_type="CAUSAL_LM"))
    model.train()
    return model


def torch_child(s: dict, steps: int) -> dict:
    import torch
    torch.set_num_threads(THREADS)
    model = torch_train_model(s)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    times, losses = [], []
    for _ in range(steps):
        ids = torch.randint(3, s["vocab"], (s["batch"], s["seq"]), generator=g)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
    return {"first_step_s": times[0], "median_step_s": statistics.median(times[2:] or times[1:]),
            "loss0": losses[0], "trainable": sum(p.numel() for p in params)}


def run_torch(s: dict, steps: int) -> dict:
    out, rss, wall, other = run_child([sys.executable, __file__, "--child", "torch", "--spec",
                                       json.dumps(s), "--steps", str(steps)], ROOT)
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "peak_rss": rss, "wall_s": wall, "other_load": other}


# ============================================================================ decoding
def decode_child(side: str, s: dict, prompt: int, new: int) -> dict:
    import numpy as np
    rows = np.random.default_rng(0).integers(3, s["vocab"], (1, prompt))
    if side == "torch":
        import torch
        torch.set_num_threads(THREADS)
        model, _ = torch_model(s)
        model.eval()
        ids = torch.tensor(rows)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                  eos_token_id=None, pad_token_id=0)
        runs = []
        with torch.no_grad():
            for _ in range(4):
                t0 = time.perf_counter()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
                runs.append((time.perf_counter() - t0, out.shape[1] - prompt))
        first = runs[0][0]
        sec, n = min(runs[1:])
        return {"tokens_per_s": n / sec, "first_run_s": first}
    os.environ.setdefault("MS_DEV_LAUNCH_BLOCKING", "1")
    sys.path.insert(0, str(ROOT))
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.runtime.launch_blocking()
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    from petrun.infer.generate import GenerationConfig, generate
    from petrun.models.registry import build_base_model
    arch, mc, _ = petrun_model(s)
    net = build_base_model({"arch": {"type": arch}, "model_config": mc}, device_target="CPU")
    net.set_train(False)
    cfg = GenerationConfig(max_new_tokens=new)
    t0 = time.perf_counter()
    generate(net, rows.tolist(), cfg)
    first = time.perf_counter() - t0
    best = min((generate(net, rows.tolist(), cfg) for _ in range(3)), key=lambda r: r.seconds)
    return {"tokens_per_s": best.tokens_per_second, "first_run_s": first}


def run_decode(side: str, s: dict, prompt: int = 32, new: int = 128) -> dict:
    out, rss, _, other = run_child([sys.executable, __file__, "--child", f"decode-{side}", "--spec",
                                    json.dumps(s), "--decode-len", f"{prompt},{new}"], ROOT,
                                   {"GLOG_v": "3"})
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss": rss, "other_load": other}


# ============================================================================ report
def tokens(s: dict) -> int:
    return s["batch"] * s["seq"]


def table(rows: list[dict]) -> str:
    lines = ["| shape | batch × seq | petrun tok/s | torch tok/s | petrun/torch | petrun first step s "
             "| petrun first step, cached s | torch first step s | petrun peak RSS MiB | torch peak RSS MiB | other cores petrun / torch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        p, t, s = r["petrun"], r["torch"], SHAPES[r["shape"]]
        pt, tt = tokens(s) / p["median_step_s"], tokens(s) / t["median_step_s"]
        lines.append(f"| {r['shape']}{'' if s['lora'] else ' (full)'} | {s['batch']} × {s['seq']} | "
                     f"{pt:,.0f} | {tt:,.0f} | {pt / tt:.2f}× | {p['first_step_s']:.1f} | "
                     f"{'–' if p.get('first_step_warm_s') is None else format(p['first_step_warm_s'], '.1f')} | "
                     f"{t['first_step_s']:.1f} | {p['peak_rss'] / 2**20:,.0f} | "
                     f"{t['peak_rss'] / 2**20:,.0f} | {p['other_load']:.2f} / {t['other_load']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    ap.add_argument("--petrun-args", default="", help="extra overrides for petrun finetune")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--decode-len", default="32,128", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        if args.child == "torch":
            print(json.dumps(torch_child(spec, args.steps)))
        else:
            prompt, new = map(int, args.decode_len.split(","))
            print(json.dumps(decode_child(args.child.split("-", 1)[1], spec, prompt, new)))
        return 0
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; choose from {', '.join(SHAPES)}")
    extra = args.petrun_args.split()
    load0 = os.getloadavg()[0]
    print(f"load average before: {load0:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # A compile cache of this invocation's own: round 1 of each shape compiles from scratch.
        os.environ["PETRUN_CACHE_DIR"] = str(work / "cache")
        for name in names:
            s = SHAPES[name]
            best: dict = {}
            firsts: dict = {}
            la = os.getloadavg()[0]
            for r in range(args.rounds):
                order = ("petrun", "torch") if r % 2 == 0 else ("torch", "petrun")
                for side in order:
                    try:
                        res = (run_petrun(name, s, args.steps, work, extra) if side == "petrun"
                               else run_torch(s, args.steps))
                    except RuntimeError as e:   # one shape failing must not lose the others
                        print(f"  {name} round {r + 1} {side}: FAILED {str(e)[-800:]}", flush=True)
                        continue
                    print(f"  {name} round {r + 1} {side:6s}: median {res['median_step_s']:.3f} s "
                          f"first {res['first_step_s']:.1f} s rss {res['peak_rss'] / 2**20:,.0f} MiB "
                          f"loss0 {res['loss0']:.3f} (other {res['other_load']:.2f} cores)", flush=True)
                    firsts.setdefault(side, []).append(res["first_step_s"])
                    if side not in best or res["median_step_s"] < best[side]["median_step_s"]:
                        best[side] = dict(res)
            for side in best:
                # petrun's first run compiles (cold); later runs of the same config load the
                # compile cache (warm). torch has no compile: its best first step.
                f = firsts[side]
                best[side]["first_step_s"] = f[0] if side == "petrun" else min(f)
                best[side]["first_step_warm_s"] = min(f[1:]) if len(f) > 1 else None
            if len(best) == 2:
                rows.append({"shape": name, **best, "load": (la, os.getloadavg()[0])})
    decode = None
    if not args.no_decode:
        # Alternating sides like the training rows (the order flips each round); each side
        # keeps its best tokens/s and its first (compile) run of round 1.
        s = SHAPES[DECODE_SHAPE]
        decode = {}
        for r in range(args.rounds):
            for side in ("petrun", "torch") if r % 2 == 0 else ("torch", "petrun"):
                try:
                    res = run_decode(side, s)
                except RuntimeError as e:
                    print(f"  decode {side}: FAILED {str(e)[-800:]}", flush=True)
                    continue
                print(f"  decode {DECODE_SHAPE} round {r + 1} {side}: {res['tokens_per_s']:.1f} "
                      f"tok/s (first run {res['first_run_s']:.1f} s)", flush=True)
                if side in decode:
                    res["first_run_s"] = decode[side]["first_run_s"]
                if side not in decode or res["tokens_per_s"] > decode[side]["tokens_per_s"]:
                    decode[side] = res
        if len(decode) < 2:
            decode = None
    load1 = os.getloadavg()[0]
    other = max([r[side]["other_load"] for r in rows for side in ("petrun", "torch")]
                + [d["other_load"] for d in (decode or {}).values()] or [0.0])
    busy = other > BUSY_OTHER
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.rounds} rounds × {args.steps} steps; load average {load0:.2f} before, "
          f"{load1:.2f} after; other processes used up to {other:.2f} cores during a kept run"
          + (f" — BUSY (> {BUSY_OTHER}): absolute figures are inflated, "
                                  "ratios are interleaved" if busy else ""))
    print(table(rows))
    if decode:
        p, t = decode["petrun"]["tokens_per_s"], decode["torch"]["tokens_per_s"]
        print(f"\ndecoding ({DECODE_SHAPE}, 1 × 32 → 128, greedy, KV cache): petrun {p:.1f} tok/s, "
              f"transformers generate {t:.1f} tok/s → {p / t:.2f}×; first run (compile) "
              f"{decode['petrun']['first_run_s']:.1f} s vs {decode['torch']['first_run_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "decode": decode, "load": [load0, load1],
                                         "busy": busy}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
