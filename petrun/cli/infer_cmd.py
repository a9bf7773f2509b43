"""`petrun predict`, `petrun eval` and `petrun chat`: their own options and run_mindformer.py's
predict flags. The verbs themselves (flags shared with finetune) live in run.py; the options
declared here (PREDICT_OPTIONS, EVAL_OPTIONS, CHAT_OPTIONS) arrive as keyword arguments of the
recipes in petrun/infer/recipe.py (run_predict / run_eval) and petrun/infer/chat_recipe.py
(run_chat), which build, load, generate and report.
"""
from __future__ import annotations

import inspect
import os
from typing import List, Optional

import typer

from petrun.errors import UserError


def _option(name: str, annotation, default, *decls: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, help=help))


_COMMON = [
    _option("adapter", Optional[str], None, "--adapter",
            help="Adapter checkpoint (file or folder) loaded on top of load_checkpoint."),
    _option("merge", bool, False, "--merge", help="Merge LoRA into the base weights first."),
    _option("output", str, "text", "--output", help="text (default) or json (on stdout)."),
]
EVAL_OPTIONS = list(_COMMON)
PREDICT_OPTIONS = _COMMON + [
    _option("prompt", Optional[List[str]], None, "--prompt",
            help="Prompt text, wrapped in the chat template (repeat for a batch). Without a "
                 "prompt option, prompts are read from stdin when it is piped, one per line."),
    _option("prompt_file", Optional[str], None, "--prompt-file",
            help="One prompt per line, or .json/.jsonl alpaca records (instruction, input)."),
    _option("prompt_ids", Optional[str], None, "--prompt-ids",
            help="Token ids as is, e.g. 1,2,3 (';' separates prompts); no template."),
    _option("max_new_tokens", Optional[int], None, "--max-new-tokens",
            help="Tokens to generate (default: max_decode_length minus the prompt)."),
    _option("do_sample", Optional[bool], None, "--do-sample/--greedy",
            help="Sample instead of greedy decoding (default: model_config.do_sample)."),
    _option("top_k", Optional[int], None, "--top-k",
            help="Keep the k most likely tokens (0: off)."),
    _option("top_p", Optional[float], None, "--top-p", help="Nucleus sampling mass (1.0: off)."),
    _option("temperature", Optional[float], None, "--temperature", help="Sampling temperature (0: greedy decoding)."),
    _option("repetition_penalty", Optional[float], None, "--repetition-penalty",
            help="> 1 discourages repeating tokens (1.0: off)."),
    _option("chat_template", Optional[str], None, "--chat-template",
            help="alpaca, vicuna, glm2 or none (default: processor.tokenizer.chat_template, else "
                 "the one the adapter's training run recorded, else the family's finetune "
                 "format)."),
    _option("no_cache", bool, False, "--no-cache",
            help="Recompute the whole sequence each step instead of using the KV cache."),
]

_SHARED = ("do_sample", "top_k", "top_p", "temperature", "repetition_penalty", "chat_template")
CHAT_OPTIONS = _COMMON + [
    _option("max_new_tokens", Optional[int], None, "--max-new-tokens",
            help="Most tokens per answer (default: max_decode_length); an answer also ends "
                 "where the context (seq_length) does."),
    _option("system", Optional[str], None, "--system",
            help="A system prompt that opens every conversation (after /reset too), in the "
                 "template's system slot (not glm2's, which has none)."),
] + [p for p in PREDICT_OPTIONS if p.name in _SHARED]


# ---------------------------------------------------------------------------------------------
# run_mindformer.py's predict flags


def take_predict_input(args: list[str], options: dict) -> tuple[list[str], list]:
    """run_mindformer.py's predict input in petrun's terms; returns the other words and the
    overrides. `--predict_data TEXT …` (argparse nargs='+') becomes the prompts, as raw text like
    MindFormers' pipeline takes them (chat template none unless --chat-template says otherwise;
    a literal \\n is a newline, as MindFormers replaces it); one existing file becomes
    --prompt-file (MindFormers reads it one prompt per line). `--predict_batch_size N` sets
    model.model_config.batch_size, the generation batch."""
    from petrun.config.overrides import MF_FLAG_TABLE, Override, take_nargs

    rest, overrides, data, i = [], [], None, 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if name == "--predict_data":
            data, i = take_nargs(args, i)
            continue
        if name == "--predict_batch_size":
            if not eq:
                if i + 1 >= len(args):
                    raise UserError("flag '--predict_batch_size' needs a value",
                                    key="--predict_batch_size", fix="write --predict_batch_size 4")
                value, i = args[i + 1], i + 1
            try:
                size = int(value)
            except ValueError:
                size = 0
            if size < 1:
                raise UserError(f"--predict_batch_size expects a positive integer, got '{value}'",
                                key="--predict_batch_size", fix="write --predict_batch_size 4")
            overrides.append(Override(MF_FLAG_TABLE["predict_batch_size"].key, size,
                                      text=f"--predict_batch_size {value}"))
        else:
            rest.append(word)
        i += 1
    if data is not None:
        given = [f for f, k in (("--prompt", "prompt"), ("--prompt-file", "prompt_file"),
                                ("--prompt-ids", "prompt_ids")) if options.get(k)]
        if given:
            raise UserError(f"--predict_data and {given[0]} given together; choose one",
                            key="--predict_data",
                            fix="--predict_data TEXT is MindFormers' spelling of --prompt "
                                "without a chat template; keep one of them")
        if len(data) == 1 and os.path.isdir(data[0]):
            raise UserError("--predict_data is a folder: MindFormers collects the images in it, "
                            "and petrun's models take text", file=data[0], key="--predict_data",
                            fix="give the text, or a text file with one prompt per line")
        if len(data) == 1 and os.path.isfile(data[0]):
            options["prompt_file"] = data[0]
        else:
            options["prompt"] = [text.replace("\\n", "\n") for text in data]
        alpaca = str(options.get("prompt_file") or "").endswith((".json", ".jsonl"))
        if not options.get("chat_template") and not alpaca:   # alpaca records keep theirs
            options["chat_template"] = "none"
    return rest, overrides
