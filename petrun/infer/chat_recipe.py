"""The chat recipe: load the model once, then answer one line at a time over one conversation
(petrun.infer.chat_session keeps it in a KV cache), until /exit or the end of input.

    run_chat(cfg, console, adapter="output/checkpoint/rank_0", max_new_tokens=64)

Lines come from the terminal (with a prompt) or, when stdin is not a terminal, one prompt per line
(`printf 'hi\n/reset\nhello\n' | petrun chat ...`), so a chat can be scripted and tested. Commands:
/reset (a new conversation), /exit (or /quit; the end of input does the same), /help.

--system TEXT opens every conversation (after /reset too) in the template's system slot; a
template without one (glm2) is refused before anything is built. Ctrl-C while an answer streams
stops it and drops that exchange (the model never sees a half answer; the cache forgets it), then
the prompt comes back; Ctrl-C at the prompt ends the chat as /exit does (exit status 0).

The sampling flags are predict's, checked by the same code (petrun.infer.recipe). With --output
json each answer is one JSON line on stdout (progress goes to stderr): prompt, the ids this turn
prefilled, the answer's ids and text, finish_reason, the conversation's tokens.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from typing import IO, Optional

from petrun.errors import UserError

HELP = ("/reset starts a new conversation, /exit (or Ctrl-D) ends the chat, Ctrl-C stops an "
        "answer; anything else is your message")


def run_chat(cfg, console, *, max_new_tokens: Optional[int] = None,
             do_sample: Optional[bool] = None, top_k: Optional[int] = None,
             top_p: Optional[float] = None, temperature: Optional[float] = None,
             repetition_penalty: Optional[float] = None, adapter: Optional[str] = None,
             merge: bool = False, output: str = "text", chat_template: Optional[str] = None,
             system: Optional[str] = None, stdin: IO[str] | None = None) -> dict:
    from petrun.data.tokenizer import load_tokenizer
    from petrun.infer.chat import model_template
    from petrun.infer.chat_session import ChatSession
    from petrun.infer.generate import GenerationConfig, position_capacity
    from petrun.infer.recipe import _runtime, _sampling, _say, check_options, load_model
    from petrun.models.registry import build_config, embedding_rows

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
    _check_system(system, template)

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
                          vocab_size=embedding_rows(model_cfg), system=system)
    interactive = stdin.isatty()
    if interactive or output == "text":
        say(f"[dim]chat ({template} template, {session.capacity} tokens of context, "
            f"{'sampling' if sampling.do_sample else 'greedy'}); {HELP}. The first answer "
            "compiles the decode step.[/dim]")

    def emit(record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False), flush=True)

    counts = {"turns": 0, "resets": 0, "refused": 0, "interrupted": 0}
    hold = {"done": False}   # the test hook's one pause
    try:
        for line in _lines(stdin, interactive):
            if not _one_line(line.strip(), session, console, say, output, interactive,
                             tokenizer, counts, emit, hold):
                break
    except KeyboardInterrupt:   # Ctrl-C at the prompt (or between turns): the chat ends
        print(file=sys.stderr)
    return {**counts, "template": template}


def _check_system(system: Optional[str], template: str) -> None:
    from petrun.infer.chat import TEMPLATES

    if system is None:
        return
    if not system.strip():
        raise UserError("--system is empty", key="--system",
                        fix="give the system prompt text, or leave --system out")
    if not TEMPLATES[template].system:
        raise UserError(f"the {template} chat template has no system turn", key="--system",
                        fix="leave --system out, or choose a template with one "
                            "(--chat-template vicuna, alpaca or none)")


def _one_line(text: str, session, console, say, output: str, interactive: bool, tokenizer,
              counts: dict, emit, hold: dict) -> bool:
    """Act on one line of input; False ends the chat."""
    from rich.markup import escape

    from petrun.infer.chat_session import ContextFull
    from petrun.infer.recipe import _streamer
    from petrun.train.resume import pause_for_tests

    if not text:
        return True
    if text in ("/exit", "/quit"):
        return False
    if text == "/reset":
        session.reset()
        counts["resets"] += 1
        emit({"event": "reset"}) if output == "json" else say("[dim](new conversation)[/dim]")
        return True
    if text in ("/help", "/?"):
        say(HELP)
        return True
    if text.startswith("/") and " " not in text:
        say(f"[yellow]unknown command {text}[/yellow]: {HELP}")
        return True
    if output == "text" and not interactive:   # a readable transcript of piped input
        say(f">>> {escape(text)}")
    stream = _streamer(console, tokenizer) if output == "text" else None

    signals = _AnswerSignals()

    def on_token(step, tokens, active):
        if stream is not None:
            stream(step, tokens, active)
        if step == 1 and not hold["done"]:   # tests: hold the first answer midway, once
            hold["done"] = True
            pause_for_tests("chat_answer", say, lambda: signals.asked)
        signals.check()

    try:
        with signals:
            turn = session.ask(text, on_token=on_token)
    except ContextFull as full:
        counts["refused"] += 1
        if output == "json":
            emit({"event": "context_full", "message": str(full)})
        else:
            console.print(f"[yellow]context full:[/yellow] {escape(str(full))}",
                          highlight=False, soft_wrap=True)
        return True
    except KeyboardInterrupt:   # Ctrl-C while the answer streams: drop this exchange
        counts["interrupted"] += 1
        if output == "json":
            emit({"event": "interrupted"})
        else:
            console.print()
            say("[dim](answer stopped; this message and its answer are not part of the "
                "conversation)[/dim]")
        return True
    counts["turns"] += 1
    if output == "json":
        emit({"turn": counts["turns"], **turn.as_dict()})
        return True
    console.print()
    note = {"eos": "", "length": ", cut at --max-new-tokens",
            "context": "; the context is full now: /reset to go on"}[turn.finish_reason]
    seconds = turn.prefill_seconds + turn.decode_seconds
    say(f"[dim]({len(turn.ids)} tokens in {seconds:.2f} s; context {turn.context_tokens}/"
        f"{turn.capacity}{note})[/dim]")
    return True


def _own_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt again (at the prompt). MindSpore installs its own SIGINT
    handler while a compiled graph runs (it sends the process SIGTERM) and leaves it in place."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _AnswerSignals:
    """While an answer is generated, SIGINT (and SIGTERM: a Ctrl-C that lands inside a compiled
    decode step reaches us as the SIGTERM MindSpore's handler sends) asks it to stop; check(),
    called after each token, raises KeyboardInterrupt then, so the interrupt never surfaces inside
    MindSpore (during the step graph's compile it would print the analyzer's dump). A second
    signal before that raises at once. Outside an answer SIGTERM ends the chat as usual."""

    def __init__(self):
        self.asked = False

    def _handle(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def check(self) -> None:
        self._own()   # the step just run left MindSpore's SIGINT handler in place
        if self.asked:
            raise KeyboardInterrupt

    def _own(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)

    def __enter__(self):
        self.asked, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._own()
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        _own_sigint()
        return False


def _lines(stdin: IO[str], interactive: bool):
    """The user's lines: input() with a prompt on a terminal (line editing), else stdin as is.
    Ctrl-D (end of input) and Ctrl-C while waiting for a line end them."""
    if not interactive:
        try:
            _own_sigint()
            for line in stdin:
                yield line
                _own_sigint()
        except KeyboardInterrupt:
            pass
        return
    while True:
        try:
            _own_sigint()
            yield input("\n>>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
