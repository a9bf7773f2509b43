"""`petrun finetune|train|eval|predict`: the run verbs, with run_mindformer.py's flag surface."""
from __future__ import annotations

import inspect
from typing import Optional

import typer

from petrun.cli.common import OVERRIDE_CONTEXT, collect_overrides, console, err_console
from petrun.config import load_config
from petrun.config.overrides import Override
from petrun.errors import UserError

TRAIN_VERBS = ("finetune", "train")
# Only the training verbs continue a run; --resume (optional value, parsed by _take_resume) and
# this option are therefore theirs alone.
TRAIN_OPTIONS = [inspect.Parameter(
    "resume_training", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
    default=typer.Option(None, "--resume_training", help="True/False or a checkpoint name.")),
    inspect.Parameter(
    "overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--overwrite", help="Start afresh in an output_dir that holds "
                         "another run: its checkpoints and metrics are replaced, as a set."))]


def _take_resume(args: list[str]) -> tuple[list[str], list[Override]]:
    """`--resume [PATH]` (an option with an optional value, which typer cannot declare) becomes
    the override resume_training=True or resume_training=PATH. A word after --resume is its
    PATH unless it is another option or an override (has '=' or starts with '~')."""
    rest, out, i = [], [], 0
    while i < len(args):
        word = args[i]
        if word == "--resume" or word.startswith("--resume="):
            value = word.partition("=")[2] or True
            nxt = args[i + 1] if i + 1 < len(args) else ""
            if value is True and nxt and not nxt.startswith(("-", "~")) and "=" not in nxt:
                value, i = nxt, i + 1
            out.append(Override("resume_training", value, text=f"--resume {value}".rstrip()))
        else:
            rest.append(word)
        i += 1
    return rest, out


def _refuse_resume(args: list[str], mode: str) -> None:
    """eval/predict start from weights, not from a run: a --resume there would be ignored (it
    lands in the config as resume_training, which only the training recipe reads)."""
    for word in args:
        flag = word.partition("=")[0]
        if flag in ("--resume", "--resume_training"):
            raise UserError(f"unknown option for petrun {mode}: only finetune and train continue "
                            "a run", key=flag,
                            fix=f"drop {flag}; petrun {mode} takes its weights from "
                                "--load_checkpoint and --adapter")


def _flags(run_mode, load_checkpoint, auto_trans_ckpt, use_parallel, train_dataset_dir,
           eval_dataset_dir, src_strategy_path_or_dir, output_dir, device_id, seed,
           resume_training):
    return dict(run_mode=run_mode, load_checkpoint=load_checkpoint, auto_trans_ckpt=auto_trans_ckpt,
                use_parallel=use_parallel, train_dataset_dir=train_dataset_dir,
                eval_dataset_dir=eval_dataset_dir, src_strategy_path_or_dir=src_strategy_path_or_dir,
                output_dir=output_dir, device_id=device_id, seed=seed,
                resume_training=resume_training)


def _make_verb(mode: str, summary: str, extra: tuple = ()):
    """The verb with the shared flags; `extra` (inspect.Parameters with typer.Option defaults)
    adds verb-only options, passed through to run_job as `options` (except the training verbs'
    resume_training, which becomes an override like the other MindFormers flags)."""
    def verb(ctx: typer.Context,
             config: str = typer.Option(..., "--config", "-c", help="YAML file (MindFormers schema)."),
             run_mode: Optional[str] = typer.Option(None, "--run_mode", help="MindFormers' run mode; must be this verb's (finetune and train are one recipe)."),
             load_checkpoint: Optional[str] = typer.Option(None, "--load_checkpoint", help="Weights: a file, a folder, or a folder of rank_N/."),
             auto_trans_ckpt: Optional[str] = typer.Option(None, "--auto_trans_ckpt", help="True/False: reshard load_checkpoint to this layout."),
             use_parallel: Optional[str] = typer.Option(None, "--use_parallel", help="True/False: distributed run (under msrun)."),
             train_dataset_dir: Optional[str] = typer.Option(None, "--train_dataset_dir", help="Sets train_dataset.data_loader.dataset_dir."),
             eval_dataset_dir: Optional[str] = typer.Option(None, "--eval_dataset_dir", help="Sets eval_dataset.data_loader.dataset_dir."),
             src_strategy_path_or_dir: Optional[str] = typer.Option(None, "--src_strategy_path_or_dir", help="Strategy of a sharded load_checkpoint."),
             output_dir: Optional[str] = typer.Option(None, "--output_dir", help="Where checkpoints, logs and strategies go."),
             device_id: Optional[str] = typer.Option(None, "--device_id", help="Sets context.device_id."),
             seed: Optional[str] = typer.Option(None, "--seed", help="Global seed."),
             skip_preflight: bool = typer.Option(False, "--skip-preflight", help="Start without the pre-flight checks (memory, paths, checkpoint, data)."),
             **options):
        resume_training = options.pop("resume_training", None)
        overwrite = [Override("overwrite_output_dir", True, text="--overwrite")] \
            if options.pop("overwrite", False) else []
        predict_input: list[Override] = []
        if mode in TRAIN_VERBS:
            args, resume = _take_resume(ctx.args)
        else:
            _refuse_resume(ctx.args, mode)
            args, resume = ctx.args, []
            from petrun.cli.infer_cmd import take_predict_input
            from petrun.infer.recipe import check_options
            if mode == "predict":   # run_mindformer.py's --predict_data / --predict_batch_size
                args, predict_input = take_predict_input(args, options)
            check_options(mode, options)   # option mistakes before the config is even read
        overrides = collect_overrides(args, _flags(
            run_mode, load_checkpoint, auto_trans_ckpt,
            use_parallel, train_dataset_dir, eval_dataset_dir, src_strategy_path_or_dir,
            output_dir, device_id, seed, resume_training)) + resume + predict_input + overwrite
        from petrun.cli import run_mode as modes
        # chat is a predict run to MindFormers' run_mode (and to the pre-flight).
        overrides += modes.for_verb("predict" if mode == "chat" else mode, overrides)
        for notice in dict.fromkeys(o.notice for o in overrides if o.notice):
            err_console.print(f"note: {notice}", style="dim", markup=False, highlight=False,
                              soft_wrap=True)
        cfg = load_config(config, overrides)
        from petrun.jobs import run_job
        from petrun.errors import Interrupted
        # With --output json, stdout carries the JSON alone; progress goes to stderr.
        out = err_console if options.get("output") == "json" else console
        try:
            run_job(cfg, verb=mode, console=out, preflight=not skip_preflight, options=options)
        except Interrupted as stop:  # SIGTERM/SIGINT: checkpoint saved, message printed
            raise SystemExit(stop.exit_code) from None

    verb.__doc__ = summary + "\n\nExtra words are overrides: a.b.c=value, ~a.b, or --a.b.c value."
    if mode in TRAIN_VERBS:
        verb.__doc__ += ("\n\n--resume [PATH] continues a run from its newest intact checkpoint "
                         "(in output_dir, or PATH: an output_dir, a checkpoint folder or file); "
                         "--overwrite starts afresh in an output_dir that holds another run."
                         f"\n\nExamples:\n\n  petrun {mode} --config lora_llama2_tiny.yaml\n\n"
                         f"  petrun {mode} --config configs/llama2/lora_llama2_7b.yaml "
                         "--train_dataset_dir /data/alpaca.mindrecord --load_checkpoint "
                         "/ckpt/llama2_7b.ckpt model.model_config.pet_config.lora_rank=16\n\n"
                         f"  petrun {mode} --config my_run.yaml --resume")
    elif mode == "predict":
        verb.__doc__ += ("\n\nExamples:\n\n  petrun predict --config lora_llama2_tiny.yaml "
                         "--adapter output/checkpoint/rank_0 --prompt \"Give three tips.\"\n\n"
                         "  petrun predict --config configs/llama2/lora_llama2_7b.yaml "
                         "--load_checkpoint /ckpt/llama2_7b.ckpt --predict_data \"I love Beijing, "
                         "because\"\n\n"
                         "  cat prompts.txt | petrun predict --config lora_llama2_tiny.yaml   "
                         "(no prompt option: one prompt per line from stdin)")
    elif mode == "chat":
        verb.__doc__ += ("\n\nCommands: /reset starts a new conversation, /exit ends the chat "
                         "(as Ctrl-D or Ctrl-C at the prompt do); Ctrl-C while an answer streams "
                         "stops it and drops that exchange. "
                         "The model is loaded and compiled once and each turn prefills only its "
                         "new tokens (the KV cache is kept); when the context (seq_length) is "
                         "full, a turn is refused until /reset. With stdin piped, each line is a "
                         "message."
                         "\n\nExamples:\n\n  petrun chat --config lora_llama2_tiny.yaml "
                         "--adapter output/checkpoint/rank_0\n\n"
                         "  printf 'Give three tips.\\n/reset\\nName a color.\\n' | petrun chat "
                         "--config lora_llama2_tiny.yaml --output json")
    elif mode == "eval":
        verb.__doc__ += ("\n\nExamples:\n\n  petrun eval --config lora_llama2_tiny.yaml "
                         "--adapter output/checkpoint/rank_0 --eval_dataset_dir "
                         "data/demo/alpaca_demo_seq256.jsonl")
    sig = inspect.signature(verb)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    verb.__signature__ = sig.replace(parameters=params + list(extra))
    return verb


def register(app: typer.Typer) -> None:
    from petrun.cli.infer_cmd import CHAT_OPTIONS, EVAL_OPTIONS, PREDICT_OPTIONS
    for mode, summary, extra in (
        ("finetune", "Finetune a model with the PET method in model.model_config.pet_config.",
         TRAIN_OPTIONS),
        ("train", "Train (same recipe as finetune; MindFormers' run_mode train).", TRAIN_OPTIONS),
        ("eval", "Evaluate loss and perplexity on eval_dataset.", EVAL_OPTIONS),
        ("predict", "Generate text (KV cache, left-padded batches, streamed to the terminal).",
         PREDICT_OPTIONS),
        ("chat", "Chat in the terminal: multi-turn in the training chat template, streamed, the "
         "KV cache kept across turns; one message per line when stdin is piped.", CHAT_OPTIONS),
    ):
        app.command(mode, context_settings=OVERRIDE_CONTEXT)(_make_verb(mode, summary, tuple(extra)))
