"""`petrun data prepare | train-tokenizer`: raw data → MindRecord, and small SentencePiece models.

The work is in petrun.data.prepare and petrun.data.sp_train; this module parses, shows progress
and prints the summary.
"""
from __future__ import annotations

from typing import Optional

import typer

from petrun.cli.common import console, err_console

app = typer.Typer(help="Prepare datasets (alpaca, ShareGPT, OpenAI messages, AdvertiseGen, wikitext "
                       "→ MindRecord) and train tokenizers. Nothing is downloaded.",
                  no_args_is_help=True)


def _settings(fmt: str, config: Optional[str], tokenizer: Optional[str],
              tokenizer_type: Optional[str], seq_length: Optional[int],
              max_source_length: Optional[int], max_target_length: Optional[int]) -> dict:
    """Tokenizer section, lengths and label shift from --config, overridden by the flags."""
    from petrun.data.tokenizer import tokenizer_config_for_path
    from petrun.errors import UserError

    out = {"tokenizer": None, "seq_length": seq_length, "max_source_length": max_source_length,
           "max_target_length": max_target_length, "shift_labels": False, "chat_template": None,
           "family_template": "alpaca", "columns": None, "split": None}
    if config:
        from petrun.config import load_config
        from petrun.data.templates import default_template
        from petrun.models.registry import arch_entry

        cfg = load_config(config)
        tok = cfg.get("processor.tokenizer") or {}
        out["chat_template"] = tok.get("chat_template")
        out["columns"] = dict(cfg.get("train_dataset.columns") or {}) or None
        out["split"] = cfg.get("train_dataset.split")
        out["tokenizer"] = dict(cfg.get("train_dataset.tokenizer") or cfg.get("processor.tokenizer")
                                or {}) or None
        out["seq_length"] = seq_length or cfg.get("model.model_config.seq_length")
        for name in ("max_source_length", "max_target_length"):
            out[name] = out[name] if out[name] is not None else cfg.get(f"train_dataset.{name}")
        arch = cfg.get("model.arch.type")
        # GLM2 trains on labels already shifted: alpaca samples are shifted to seq_length tokens.
        out["shift_labels"] = bool(arch) and arch_entry(arch).extra_tokens == 0
        if arch:
            out["family_template"] = default_template(arch, (cfg.get("train_dataset.tokenizer")
                                                             or tok).get("type"))
    if tokenizer:
        tok_cfg = tokenizer_config_for_path(tokenizer, tokenizer_type)
        if fmt == "advertisegen" and not tokenizer_type and tok_cfg.get("type") == "LlamaTokenizer":
            tok_cfg["type"] = "ChatGLM2Tokenizer"   # AdvertiseGen is ChatGLM2's dataset
        out["tokenizer"] = tok_cfg
    elif out["tokenizer"] and tokenizer_type:
        out["tokenizer"]["type"] = tokenizer_type
    if not out["tokenizer"]:
        raise UserError("no tokenizer given", key="processor.tokenizer.vocab_file",
                        fix="pass --tokenizer PATH (tokenizer.model, tokenizer.json, or GPT2 "
                            "vocab.json with merges.txt beside it), or --config with "
                            "processor.tokenizer.vocab_file set")
    return out


def _columns(pairs: list[str]) -> dict:
    from petrun.errors import UserError

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise UserError(f"expected NAME=COLUMN, got {pair!r}", key="--column",
                            fix="e.g. --column messages=chats --column role=speaker")
        out[name.strip()] = value.strip()
    return out


def _check_counts(workers: Optional[int], seq_length: Optional[int]) -> None:
    from petrun.errors import UserError

    if workers is not None and workers < 1:
        raise UserError(f"must be at least 1, got {workers}", key="--workers",
                        fix="give the number of tokenizing processes, e.g. --workers 4, or leave "
                            "it out to choose by input size")
    # 0 would otherwise read as "not given" and the config's seq_length would be used silently
    if seq_length is not None and seq_length < 1:
        raise UserError(f"must be at least 1, got {seq_length}", key="--seq-length",
                        fix="give the model's seq_length, e.g. --seq-length 4096, or leave it out "
                            "to take model.model_config.seq_length from --config")


@app.command("prepare")
def prepare(
        fmt: str = typer.Argument(..., metavar="FORMAT", help="alpaca | sharegpt | messages | advertisegen | wikitext"),
        input: str = typer.Option(..., "--input", "-i", help="Raw data: JSON, JSON lines, Parquet, Arrow or a Hugging Face save_to_disk folder (alpaca, ShareGPT, messages, AdvertiseGen records), or wikitext raw text."),
        output: str = typer.Option(..., "--output", "-o", help="x.mindrecord (MindFormers' format; with --num-shards K: x.mindrecord0..K-1) or x.jsonl."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="tokenizer.model, tokenizer.json, or vocab.json (merges.txt beside it), or their folder."),
        tokenizer_type: Optional[str] = typer.Option(None, "--tokenizer-type", help="MindFormers tokenizer type (LlamaTokenizer, ChatGLM2Tokenizer, GPT2Tokenizer, ...)."),
        config: Optional[str] = typer.Option(None, "--config", "-c", help="Take the tokenizer, seq_length and GLM2 lengths from this YAML."),
        seq_length: Optional[int] = typer.Option(None, "--seq-length", help="The model's seq_length; samples get seq_length + 1 tokens (MindFormers' rule)."),
        max_source_length: Optional[int] = typer.Option(None, "--max-source-length", help="advertisegen: prompt tokens."),
        max_target_length: Optional[int] = typer.Option(None, "--max-target-length", help="advertisegen: answer tokens."),
        chat_template: Optional[str] = typer.Option(None, "--chat-template", help="alpaca | vicuna | glm2 | none (default: processor.tokenizer.chat_template of --config, else alpaca for alpaca records and the family's chat template for chats, vicuna for Llama)."),
        column: list[str] = typer.Option([], "--column", help="NAME=COLUMN when the file spells a field differently (names: instruction, input, output, system, conversations, from, value, messages, role, content); repeatable."),
        split: Optional[str] = typer.Option(None, "--split", help="The split of a Hugging Face DatasetDict folder (default: train)."),
        num_shards: int = typer.Option(1, "--num-shards", help="MindRecord files to split the samples over."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Tokenizing processes (default: 1 for small inputs, else up to 8)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
):
    """Tokenize raw data into training samples, as MindFormers' preprocessing scripts do.

    petrun data prepare alpaca -i alpaca_data.json -o alpaca_seq4096.mindrecord -t tokenizer.model --seq-length 4096
    petrun data prepare alpaca -i data/demo/alpaca_demo.json -o out.mindrecord --config configs/llama2/lora_llama2_tiny.yaml
    petrun data prepare messages -i chats.jsonl -o chats.mindrecord --config configs/llama2/lora_llama2_tiny.yaml
    petrun data prepare sharegpt -i my_hf_dataset/ --split train -o sg.mindrecord -t tokenizer.model --seq-length 2048
    petrun data prepare advertisegen -i AdvertiseGen/train.json -o adgen.mindrecord -t tokenizer.model --max-source-length 64 --max-target-length 127
    petrun data prepare wikitext -i wiki.train.tokens -o wiki.mindrecord -t gpt2/vocab.json --seq-length 1024
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from petrun.data.prepare import prepare as run

    _check_counts(workers, seq_length)
    s = _settings(fmt, config, tokenizer, tokenizer_type, seq_length, max_source_length,
                  max_target_length)
    if column:
        s["columns"] = {**(s["columns"] or {}), **_columns(column)}
    unit = "paragraphs" if fmt == "wikitext" else "records"
    with Progress(TextColumn("[bold]tokenizing[/bold] " + unit), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  transient=True) as bar:
        task = {}
        report = run(fmt, input, output, tokenizer=s["tokenizer"], seq_length=s["seq_length"],
                     max_source_length=s["max_source_length"],
                     max_target_length=s["max_target_length"], shift_labels=s["shift_labels"],
                     chat_template=chat_template or s["chat_template"],
                     family_template=s["family_template"], columns=s["columns"],
                     split=split or s["split"], num_shards=num_shards, workers=workers, overwrite=overwrite,
                     on_start=lambda n: task.setdefault("id", bar.add_task("", total=n)),
                     progress=lambda n: bar.advance(task["id"], n))
    _summary(report)


def _next(r) -> None:
    # MindFormers' dataset_dir takes the first shard of a MindRecord set (it finds the rest).
    console.print(f"next: petrun finetune --config YOUR.yaml --train_dataset_dir {r.files[0]}",
                  highlight=False, soft_wrap=True)


def _summary(r) -> None:
    files = r.files[0] if len(r.files) == 1 else f"{r.files[0]} … ({len(r.files)} files)"
    console.print(f"[green]wrote[/green] {r.written} samples × {r.sample_length} tokens "
                  f"({', '.join(r.columns)}) to {files} in {r.seconds:.1f} s",
                  highlight=False, soft_wrap=True)
    _next(r)
    if r.fmt == "wikitext":
        console.print(f"  {r.records} paragraphs, {r.tokens} tokens; dropped {r.dropped_tokens} "
                      f"tail tokens (less than one block)", highlight=False)
        return
    console.print(f"  records {r.records} · written {r.written} · truncated {r.truncated} · "
                  f"dropped (bad records) {len(r.bad)}", highlight=False)
    if r.template:
        console.print(f"  chat template {r.template}: predict and chat with the same one "
                      f"(--chat-template {r.template}, or processor.tokenizer.chat_template)",
                      highlight=False, soft_wrap=True)
    if r.bad:
        err_console.print(f"[yellow]skipped {len(r.bad)} bad record(s)[/yellow] in {r.input}: "
                          f"{r.bad_preview()}", highlight=False, soft_wrap=True)
    if r.truncated:
        console.print(f"  [dim]{r.truncated} sample(s) were longer than {r.sample_length} tokens "
                      f"and were cut at the end[/dim]", highlight=False)
    if r.fully_masked:
        err_console.print(f"[yellow]{r.fully_masked} sample(s) have no supervised token[/yellow] "
                          "(labels all -100: the prompt fills the sample, or the answer holds "
                          "unknown tokens); they are kept, as MindFormers keeps them, but train "
                          "nothing. A longer --seq-length helps with the first cause.",
                          highlight=False, soft_wrap=True)


@app.command("train-tokenizer")
def train_tokenizer(
        input: str = typer.Option(..., "--input", "-i", help="Corpus: a text file (one sentence per line) or alpaca JSON (its vicuna rounds are used)."),
        vocab_size: int = typer.Option(..., "--vocab-size", help="Number of pieces (the demo uses 512)."),
        output: str = typer.Option(..., "--output", "-o", help="Folder for tokenizer.model, or a path ending in .model."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing tokenizer.model."),
):
    """Train a small SentencePiece BPE model with Llama's conventions (unk 0, bos 1, eos 2, pad =
    unk, byte fallback). Use it as processor.tokenizer.vocab_file.

    petrun data train-tokenizer -i data/demo/alpaca_demo.json --vocab-size 512 -o my_tokenizer/
    """
    from petrun.data.sp_train import train_tokenizer_file

    path, n = train_tokenizer_file(input, output, vocab_size, overwrite=overwrite)
    console.print(f"[green]wrote[/green] {path}: {vocab_size} pieces from {n} training strings",
                  highlight=False, soft_wrap=True)
