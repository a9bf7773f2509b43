"""The chat recipe: load the model once, then answer one line at a time over one conversation
(petrun.infer.chat_session keeps it in a KV cache), until /exit or the end of input.

    run_chat(cfg, console, adapter="output/checkpoint/rank_0", max_new_tokens=64)

Lines come from the terminal (with a prompt) or, when stdin is not a terminal, one prompt per line
(`printf 'hi\n/reset\nhello\n' | petrun chat ...`), so a chat can be scripted and tested. Commands:
/reset (a new conversation), /exit (or /quit; the end of input does the same), /help.

The sampling flags are predict's, checked by the same code (petrun.infer.recipe). With --output
json each answer is one JSON line on stdout (progress goes to stderr): prompt, the ids this turn
prefilled, the answer's ids and text, finish_reason, the conversation's tokens.
"""
from __future__ import annotations

import json
import sys
from typing import IO, Optional

from petrun.errors import UserError

HELP = ("/reset starts a new conversation, /exit (or Ctrl-D) ends the chat; anything else is "
        "your message")


def run_chat(cfg, console, *, max_new_tokens: Optional[int] = None,
             do_sample: Optional[bool] = None, top_k: Optional[int] = None,
             top_p: Optional[float] = None, temperature: Optional[float] = None,
             repetition_penalty: Optional[float] = None, adapter: Optional[str] = None,
             merge: bool = False, output: str = "text", chat_template: Optional[str] = None,
             stdin: IO[str] | None = None) -> dict:
    from petrun.data.tokenizer import load_tokenizer
    from petrun.infer.chat import model_template
    from petrun.infer.chat_session import ChatSession, ContextFull
    from petrun.infer.generate import GenerationConfig, position_capacity
    from petrun.infer.recipe import (_runtime, _sampling, _say, _streamer, check_options,
                                     load_model)
    from petrun.models.registry import build_config, embedding_rows
    from rich.markup import escape

    check_options("chat", dict(output=output, max_new_tokens=max_new_tokens, top_k=top_k,
                            top_p=top_p, temperature=temperature,
                            repetition_penalty=repetition_penalty, do_sample=do_sample))
    stdin = sys.stdin if stdin is None else stdin
    model_cfg = build_config(cfg.get("model"))
    sampling = _sampling(model_cfg, do_sample, top_k, top_p, temperature, repetition_penalty)
    tok_cfg = cfg.get("processor.tokenizer") or {}
    if not tok_cfg.get("vocab_file"):
        raise UserError("petrun chat needs the model's tokenizer to read and write text",
                        key="processor.tokenizer.vocab_file",
                        fix="set processor.tokenizer.vocab_file (or pass "
                            "processor.tokenizer.vocab_file=PATH)")
    tokenizer = load_tokenizer(tok_cfg)
    template, _ = model_template(cfg, flag=chat_template, adapter=adapter)

    say = _say(console)
    target = _runtime(cfg)
    with console.status("building the model and loading its weights…"):
        net = load_model(cfg, device_target=target, adapter=adapter, merge=merge, say=say)
    eos = {int(tokenizer.eos_id)}
    if getattr(model_cfg, "eos_token_id", None) is not None:
        eos.add(int(model_cfg.eos_token_id))
    seed = int(cfg.get("seed", 0) or 0)
    # The most one answer may have; an answer also ends where the context does.
    limit = max_new_tokens or int(model_cfg.max_decode_length or 0) or position_capacity(net)
    gen = GenerationConfig(max_new_tokens=limit, sampling=sampling,
                           eos_token_ids=tuple(sorted(eos)), seed=seed,
                           pad_token_id=int(getattr(model_cfg, "pad_token_id", 0) or 0))
    session = ChatSession(net, tokenizer, template, gen, seed=seed,
                          vocab_size=embedding_rows(model_cfg))
    interactive = stdin.isatty()
    if interactive or output == "text":
        say(f"[dim]chat ({template} template, {session.capacity} tokens of context, "
            f"{'sampling' if sampling.do_sample else 'greedy'}); {HELP}. The first answer "
            "compiles the decode step.[/dim]")

    def emit(record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False), flush=True)

    turns = resets = refused = 0
    for line in _lines(stdin, interactive):
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            resets += 1
            emit({"event": "reset"}) if output == "json" else say("[dim](new conversation)[/dim]")
            continue
        if text in ("/help", "/?"):
            say(HELP)
            continue
        if text.startswith("/") and " " not in text:
            say(f"[yellow]unknown command {text}[/yellow]: {HELP}")
            continue
        if output == "text" and not interactive:   # a readable transcript of piped input
            say(f">>> {escape(text)}")
        on_token = _streamer(console, tokenizer) if output == "text" else None
        try:
            turn = session.ask(text, on_token=on_token)
        except ContextFull as full:
            refused += 1
            if output == "json":
                emit({"event": "context_full", "message": str(full)})
            else:
                console.print(f"[yellow]context full:[/yellow] {escape(str(full))}",
                              highlight=False, soft_wrap=True)
            continue
        turns += 1
        if output == "json":
            emit({"turn": turns, **turn.as_dict()})
            continue
        console.print()
        note = {"eos": "", "length": ", cut at --max-new-tokens",
                "context": "; the context is full now: /reset to go on"}[turn.finish_reason]
        seconds = turn.prefill_seconds + turn.decode_seconds
        say(f"[dim]({len(turn.ids)} tokens in {seconds:.2f} s; context {turn.context_tokens}/"
            f"{turn.capacity}{note})[/dim]")
    return {"turns": turns, "resets": resets, "refused": refused, "template": template}


def _lines(stdin: IO[str], interactive: bool):
    """The user's lines: input() with a prompt on a terminal (line editing), else stdin as is."""
    if not interactive:
        yield from stdin
        return
    while True:
        try:
            yield input("\n>>> ")
        except EOFError:
            print()
            return
