"""The predict and eval recipes: set up the runtime, build the model and load its weights (+ the
adapter), then generate text or report loss/perplexity — the inference counterpart of
petrun/train/recipe.py, reached through petrun.jobs.run_job from the CLI and the Trainer alike.

    run_predict(cfg, console, prompt=["Give three tips"], max_new_tokens=32, adapter="out/ckpt/rank_0")
    run_eval(cfg, console, adapter="output/checkpoint/rank_0/")

The options are the CLI's (petrun/cli/infer_cmd.py declares them); check_options finds their
mistakes before the config is read or anything is built.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sys
from typing import List, Optional

from petrun.errors import UserError

MC = "model.model_config"


# ---------------------------------------------------------------------------------------------
# Shared setup: option checks, runtime, model


def _check_output(output: str) -> None:
    if output not in ("text", "json"):
        raise UserError(f"--output {output!r} is not a known format", key="--output",
                        fix="use --output text or --output json")


# How to correct each sampling knob; {} is "--top-p " for a flag, or "model.model_config.top_p="
# when the value came from the config.
_SAMPLING_FIX = {
    "top_k": "use 0 (off) or a positive number of tokens, e.g. {}50",
    "top_p": "use a value in (0, 1], e.g. {}0.9 (1.0 turns it off)",
    "temperature": "use a value > 0 to sample, e.g. {}0.7; for deterministic output decode "
                   "greedily (--greedy, or temperature 0 without --do-sample)",
    "repetition_penalty": "use a value > 0, e.g. {}1.1 (1.0 turns it off)",
}


_PROMPT_FIX = ("give --prompt TEXT, --prompt-file FILE or --prompt-ids 1,2,3 (or MindFormers' "
               "--predict_data TEXT), or pipe prompts in, one per line")


def _piped() -> bool:
    """stdin is a pipe or file (not a terminal): predict reads its prompts from it when no
    prompt option is given, one per line (`echo hi | petrun predict ...`)."""
    try:
        return not sys.stdin.isatty()
    except (AttributeError, ValueError):   # closed or replaced stdin
        return False


def _check_prompt_source(prompt, prompt_file, prompt_ids) -> None:
    given = [n for n, v in (("--prompt", prompt), ("--prompt-file", prompt_file),
                            ("--prompt-ids", prompt_ids)) if v]
    if len(given) > 1 or (not given and not _piped()):
        raise UserError("nothing to generate from" if not given else
                        f"{' and '.join(given)} given together; choose one", key="--prompt",
                        fix=_PROMPT_FIX)
    if prompt_file:
        _check_prompt_path(prompt_file)


def _check_prompt_path(path: str) -> None:
    if os.path.isdir(path):
        raise UserError("is a directory, not a prompt file", file=path, key="--prompt-file",
                        fix="pass the file inside it (one prompt per line, or alpaca "
                            ".json/.jsonl)")
    if not os.path.isfile(path):
        raise UserError("prompt file not found", file=path, key="--prompt-file",
                        fix="give a text file with one prompt per line, or alpaca JSON")


def _check_flags(max_new_tokens, top_k, top_p, temperature, repetition_penalty,
                 do_sample=None) -> None:
    """The values given on the command line, on their own (config defaults are checked later,
    in _sampling, once the config is read)."""
    from petrun.infer.sampling import SamplingConfig

    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"must be at least 1, got {max_new_tokens}", key="--max-new-tokens",
                        fix="pass a positive number of tokens, or leave --max-new-tokens out to "
                            "generate up to max_decode_length")
    given = {"top_k": top_k, "top_p": top_p, "temperature": temperature,
             "repetition_penalty": repetition_penalty}
    probe = SamplingConfig(do_sample=bool(do_sample),
                           **{k: v for k, v in given.items() if v is not None})
    for field, problem in probe.check():
        if given[field] is not None:
            flag = f"--{field.replace('_', '-')}"
            raise UserError(problem, key=flag, fix=_SAMPLING_FIX[field].format(flag + " "))


def check_options(mode: str, options: dict) -> None:
    """Mistakes in eval/predict/chat's own options, found before the config is read or anything
    is built (run.py calls this first; the recipes check again for direct callers)."""
    _check_output(options.get("output", "text"))
    if mode == "predict":
        _check_prompt_source(options.get("prompt"), options.get("prompt_file"),
                             options.get("prompt_ids"))
    if mode in ("predict", "chat"):
        _check_flags(options.get("max_new_tokens"), options.get("top_k"), options.get("top_p"),
                     options.get("temperature"), options.get("repetition_penalty"),
                     options.get("do_sample"))


def _runtime(cfg) -> str:
    """MindSpore context for inference; returns the device target."""
    import mindspore as ms

    from petrun.parallel.context import set_seed, setup_context
    # PyNative ops otherwise wait ~ms on a worker queue at every shape/dtype query, which
    # dominates token-by-token decoding; it must be chosen before the first kernel runs.
    ms.runtime.launch_blocking()
    target = setup_context(cfg)
    set_seed(int(cfg.get("seed", 0) or 0))
    return target


def load_model(cfg, *, device_target: str, adapter: str | None, merge: bool, say):
    """The config's model with load_checkpoint, then the adapter, loaded strictly."""
    from petrun.build import PET_PATTERN, build_model, load_checkpoint

    reports = []
    net = build_model(cfg, device_target=device_target, report=reports.append)
    pet = reports[0].pet_type if reports else None
    ckpt = cfg.get("load_checkpoint")
    pet_params = {p.name for p in net.get_parameters() if fnmatch.fnmatchcase(p.name, PET_PATTERN)}
    missing = sorted(pet_params)
    if ckpt:
        result = load_checkpoint(net, ckpt, strict=True, allow_missing=(PET_PATTERN,))
        missing = sorted(pet_params - set(result["loaded"]))
        say(f"loaded {len(result['loaded'])} tensors from {ckpt}")
    else:
        say("[yellow]warning:[/yellow] no load_checkpoint: the model has random weights "
            "(pass --load_checkpoint W)")
    if adapter:
        if pet is None:
            raise UserError("--adapter given but the config has no pet_config, so the model has "
                            "no adapter layers to load into", key=f"{MC}.pet_config",
                            fix="use the YAML the adapter was trained with")
        result = load_checkpoint(net, adapter, strict=True, key="--adapter")
        say(f"loaded {len(result['loaded'])} {pet} tensors from {adapter}")
    elif missing:
        say(f"[yellow]warning:[/yellow] {len(missing)} {pet} parameters are not in "
            f"load_checkpoint and keep their initial values (pass --adapter A)")
    if merge:
        from petrun.pet.lora import merge as merge_lora
        if pet != "lora":
            raise UserError("--merge folds LoRA weights into the base model, but this model has "
                            f"{'no PET' if pet is None else pet} layers",
                            key=f"{MC}.pet_config.pet_type", fix="drop --merge")
        say(f"merged {merge_lora(net)} LoRA layers into their base weights")
    net.set_train(False)
    return net


def _say(console):
    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)
    return say


# ---------------------------------------------------------------------------------------------
# predict


def _read_prompt_file(path: str) -> list:
    from petrun.data.alpaca import load_alpaca_records

    _check_prompt_path(path)
    if path.endswith((".json", ".jsonl")):
        records = load_alpaca_records(path, key="--prompt-file")
        bad = [i for i, r in enumerate(records)
               if not (isinstance(r, dict) and (r.get("instruction") or r.get("prompt")))]
        if bad:
            raise UserError(f"record {bad[0]} has no 'instruction' (or 'prompt') text",
                            file=path, key="--prompt-file",
                            fix="each record needs an instruction (and optionally input)")
        return records
    with open(path, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise UserError("the prompt file is empty", file=path, key="--prompt-file",
                        fix="write one prompt per line")
    return prompts


def _read_stdin() -> list[str]:
    prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise UserError("nothing to generate from: no prompt option, and stdin held no prompt "
                        "lines", key="--prompt", fix=_PROMPT_FIX)
    return prompts


def _parse_ids(text: str, vocab: int) -> list[list[int]]:
    rows = []
    for part in text.split(";"):
        if not part.strip():
            continue
        try:
            row = [int(x) for x in part.replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise UserError(f"--prompt-ids {text!r} is not a list of integers", key="--prompt-ids",
                            fix="e.g. --prompt-ids 1,450,4996 (';' between prompts)") from None
        bad = [t for t in row if not 0 <= t < vocab]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                            key="--prompt-ids", fix="use ids of this model's tokenizer")
        if row:
            rows.append(row)
    if not rows:
        raise UserError("--prompt-ids holds no token ids", key="--prompt-ids",
                        fix="e.g. --prompt-ids 1,450,4996")
    return rows


def _sampling(model_cfg, do_sample, top_k, top_p, temperature, repetition_penalty):
    from petrun.infer.sampling import SamplingConfig

    sample = bool(model_cfg.do_sample if do_sample is None else do_sample)
    temp = float(1.0 if temperature is None else temperature)
    if temp == 0.0 and do_sample is None:
        sample, temp = False, 1.0   # temperature 0 asks for greedy decoding, as serving APIs read it
    cfg = SamplingConfig(
        do_sample=sample,
        top_k=int(model_cfg.top_k if top_k is None else top_k),
        top_p=float(model_cfg.top_p if top_p is None else top_p),
        temperature=temp,
        repetition_penalty=float(model_cfg.repetition_penalty if repetition_penalty is None
                                 else repetition_penalty))
    flags = {"top_k": top_k, "top_p": top_p, "temperature": temperature,
             "repetition_penalty": repetition_penalty}
    for field, problem in cfg.check():
        key = f"--{field.replace('_', '-')}" if flags[field] is not None else f"{MC}.{field}"
        setting = f"{key} " if key.startswith("--") else f"{key}="
        raise UserError(problem, key=key, fix=_SAMPLING_FIX[field].format(setting))
    return cfg


def run_predict(cfg, console, *, prompt: Optional[List[str]] = None,
                prompt_file: Optional[str] = None, prompt_ids: Optional[str] = None,
                max_new_tokens: Optional[int] = None, do_sample: Optional[bool] = None,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                temperature: Optional[float] = None, repetition_penalty: Optional[float] = None,
                adapter: Optional[str] = None, merge: bool = False, output: str = "text",
                chat_template: Optional[str] = None, no_cache: bool = False) -> dict:
    from petrun.data.tokenizer import VOCAB_FILE_KEY
    from petrun.infer.chat import encode_prompt, model_template
    from petrun.models.registry import build_config, embedding_rows

    _check_output(output)
    _check_prompt_source(prompt, prompt_file, prompt_ids)
    _check_flags(max_new_tokens, top_k, top_p, temperature, repetition_penalty, do_sample)
    model_cfg = build_config(cfg.get("model"))
    sampling = _sampling(model_cfg, do_sample, top_k, top_p, temperature, repetition_penalty)
    tok_cfg = cfg.get("processor.tokenizer") or {}

    # Prompts → ids (the tokenizer is needed unless ids are given and no vocab_file is set).
    tokenizer, template, texts = None, None, None
    if prompt_ids:
        rows = _parse_ids(prompt_ids, embedding_rows(model_cfg))
        if tok_cfg.get("vocab_file"):
            from petrun.data.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(tok_cfg)
    else:
        from petrun.data.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(tok_cfg)
        texts = list(prompt) if prompt else _read_prompt_file(prompt_file) if prompt_file \
            else _read_stdin()
        template = model_template(cfg, flag=chat_template, adapter=adapter)[0]
        rows = [encode_prompt(template, t, tokenizer) for t in texts]
        too_big = [t for r in rows for t in r if t >= embedding_rows(model_cfg)]
        if too_big:
            raise UserError(f"the tokenizer produced id {too_big[0]}, outside the model's "
                            f"vocabulary of {embedding_rows(model_cfg)}", key=VOCAB_FILE_KEY,
                            fix="use the tokenizer the model was trained with")

    from petrun.infer.generate import GenerationConfig, generate, position_capacity

    say = _say(console)
    target = _runtime(cfg)
    with console.status("building the model and loading its weights…"):
        net = load_model(cfg, device_target=target, adapter=adapter, merge=merge, say=say)
    capacity = position_capacity(net)
    longest = max(len(r) for r in rows)
    if max_new_tokens is None:
        limit = min(int(model_cfg.max_decode_length or capacity), capacity)
        max_new_tokens = limit - longest
        if max_new_tokens < 1:
            raise UserError(f"the longest prompt has {longest} tokens, leaving no room under "
                            f"max_decode_length/seq_length ({limit})",
                            key=f"{MC}.max_decode_length", fix="shorten the prompt")
    eos = {int(model_cfg.eos_token_id)} if getattr(model_cfg, "eos_token_id", None) is not None \
        else set()
    if tokenizer is not None:
        eos.add(int(tokenizer.eos_id))
    gen = GenerationConfig(max_new_tokens=int(max_new_tokens), sampling=sampling,
                           eos_token_ids=tuple(sorted(eos)),
                           pad_token_id=int(getattr(model_cfg, "pad_token_id", 0) or 0),
                           use_cache=not no_cache, seed=int(cfg.get("seed", 0) or 0))

    batch = max(1, int(model_cfg.batch_size or 1))
    results, totals = [], {"new_tokens": 0, "seconds": 0.0, "decode_seconds": 0.0, "steps": 0}
    stream = output == "text" and batch == 1
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        on_token = _streamer(console, tokenizer) if stream else None
        res = generate(net, chunk, gen, on_token=on_token)
        if on_token is not None:
            console.print()
        for i, ids in enumerate(res.tokens):
            item = {"prompt": None if texts is None else _as_text(texts[start + i]),
                    "prompt_ids": chunk[i], "ids": ids,
                    "text": None if tokenizer is None else tokenizer.decode(_strip_eos(ids, eos)),
                    "finish_reason": res.finish_reasons[i]}
            results.append(item)
            if output == "text" and not stream:
                shown = item["text"] if item["text"] is not None else " ".join(map(str, ids))
                console.print(f"[{start + i}] {shown}", markup=False, highlight=False,
                              soft_wrap=True)
        totals["new_tokens"] += res.new_tokens
        totals["seconds"] += res.seconds
        totals["decode_seconds"] += res.decode_seconds
        totals["steps"] += res.steps
    rate = totals["new_tokens"] / totals["seconds"] if totals["seconds"] else 0.0
    summary = {"results": results, **totals, "tokens_per_second": rate,
               "use_cache": gen.use_cache, "jit": gen.use_cache and gen.jit, "template": template,
               "do_sample": sampling.do_sample, "max_new_tokens": gen.max_new_tokens}
    if output == "json":
        print(json.dumps(summary, ensure_ascii=False), flush=True)
    else:
        say(f"[dim]{totals['new_tokens']} new tokens in {totals['seconds']:.2f} s "
            f"({rate:.1f} tokens/s, {'KV cache' if gen.use_cache else 'no cache'}, "
            f"{'sampling' if sampling.do_sample else 'greedy'})[/dim]")
    return summary


def _as_text(prompt) -> str:
    if isinstance(prompt, dict):
        return prompt.get("instruction") or prompt.get("prompt") or ""
    return prompt


def _strip_eos(ids, eos) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def _streamer(console, tokenizer):
    """Print a single row's text as it grows: decode everything so far and print the new tail
    (SentencePiece pieces decoded one by one would lose their word-boundary spaces)."""
    state = {"ids": [], "shown": ""}

    def on_token(step, tokens, active):
        if not active[0]:
            return
        state["ids"].append(int(tokens[0]))
        if tokenizer is None:
            console.print(f"{int(tokens[0])} ", end="", highlight=False)
            return
        if int(tokens[0]) == tokenizer.eos_id:
            return
        text = tokenizer.decode(state["ids"])
        if text.startswith(state["shown"]):
            console.print(text[len(state["shown"]):], end="", markup=False, highlight=False,
                          soft_wrap=True)
            state["shown"] = text
        sys.stdout.flush()

    return on_token


# ---------------------------------------------------------------------------------------------
# eval


def run_eval(cfg, console, *, adapter: Optional[str] = None, merge: bool = False,
             output: str = "text") -> dict:
    from petrun.infer.eval import Evaluator

    _check_output(output)
    say = _say(console)
    target = _runtime(cfg)
    evaluator = Evaluator.from_config(cfg)   # checks the data before the model is built
    with console.status("building the model and loading its weights…"):
        net = load_model(cfg, device_target=target, adapter=adapter, merge=merge, say=say)
    # The forward graph compiles on the first batch: on a piped log say so, as a spinner does.
    say(f"evaluating {cfg.get('eval_dataset.data_loader.dataset_dir')} (the first batch "
        "compiles the forward graph)…")
    with console.status("evaluating…"):
        result = evaluator.run(net)
    if output == "json":
        print(json.dumps(result.as_dict()), flush=True)
    else:
        from rich.table import Table

        table = Table(title=f"eval: {cfg.get('eval_dataset.data_loader.dataset_dir')}")
        for name in ("loss", "perplexity", "target tokens", "samples", "batches", "seconds"):
            table.add_column(name, justify="right")
        table.add_row(f"{result.loss:.6f}", f"{result.perplexity:.4f}", str(result.tokens),
                      str(result.samples), str(result.batches), f"{result.seconds:.1f}")
        console.print(table)
    return result.as_dict()
