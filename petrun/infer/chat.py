"""Prompt templates: wrap a user's prompt the way the training data wrapped it.

A model finetuned on formatted conversations answers well only when asked in the same format, so
`petrun predict --prompt` renders the prompt with the template of the training data and stops
right where the training answer began. The templates are defined once, in
petrun/data/templates.py, which the training data is rendered with as well:

  alpaca  Llama2 alpaca data (reference/mindformers.md §7.1): the Stanford Alpaca instruction
          prompt inside FastChat's vicuna_v1.1 conversation, "{system} USER: {prompt} ASSISTANT:"
          after a bos token. The training answer's leading space is part of its first token,
          so the prompt ends at the colon.
  vicuna  The same conversation with the prompt as the user turn as is (conversation datasets).
  glm2    ChatGLM2's build_prompt, "[Round 1]\\n\\n问：{prompt}\\n\\n答：" (§7.2). petrun's
          tokenizers are SentencePiece (Llama-style) only, so the ids start with bos; the
          ChatGLM2 tokenizer's [gMASK] sop start comes with that tokenizer.
  none    The raw text (GPT-2's wikitext language modelling), after bos.

Which template a model speaks is decided in one place, `model_template`, which predict, chat and
export call: --chat-template, else processor.tokenizer.chat_template, else the template the run
that trained the adapter (or the weights) recorded in its checkpoint manifest — raw chat data on a
family whose default is alpaca trains with vicuna (data/formats.py:training_template) — else the
model family's finetune format (`default_template`).
"""
from __future__ import annotations

from typing import Any, Mapping

from petrun.data.templates import (TEMPLATE_KEY, TEMPLATES, check_template, default_template,
                                   to_text)
from petrun.data.templates import render as render_turns

__all__ = ["TEMPLATE_KEY", "TEMPLATES", "check_template", "default_template", "encode_prompt",
           "model_template", "render"]


def render(template: str, prompt: str | Mapping[str, Any], system: str | None = None) -> str:
    """One user prompt (a string, or an alpaca record {instruction, input}) rendered with
    petrun.data.templates, left open where the training answer began; `system` fills the
    template's system slot (TemplateError for a template without one)."""
    turns = ([{"role": "system", "content": system}] if system else []) \
        + [{"role": "user", "content": prompt}]
    return to_text(render_turns(check_template(template), turns, add_generation_prompt=True))


def encode_prompt(template: str, prompt: str | Mapping[str, Any], tokenizer,
                  system: str | None = None) -> list[int]:
    """Token ids of the rendered prompt after bos, as every training sample begins."""
    return tokenizer.encode(render(template, prompt, system), add_bos=True)


def recorded_template(*paths) -> tuple[str, str] | None:
    """(template, path) from the first path that is a petrun run's checkpoint (file or rank
    folder) or a run's config.yaml beside its checkpoints, whose manifest names the template its
    training data was rendered with; None when none does (a base model, MindRecord data)."""
    from pathlib import Path

    from petrun.ckpt.store import manifest_of

    for path in paths:
        if not path:
            continue
        p = Path(str(path))
        manifest = manifest_of(p.parent if p.suffix in (".yaml", ".yml") else p)
        name = (manifest or {}).get("chat_template")
        if isinstance(name, str) and name in TEMPLATES:
            return name, str(p)
    return None


def model_template(cfg, *, flag: str | None = None, adapter=None,
                   tokenizer: Mapping | None = None) -> tuple[str, str]:
    """(template, why): the chat template this model speaks, for predict, chat and export alike.

    An explicit choice wins (--chat-template, then processor.tokenizer.chat_template); then what
    the run recorded for the adapter, for load_checkpoint (a full finetune's weights) or for the
    config (a run's own config.yaml); then the family's default."""
    tok = dict(tokenizer if tokenizer is not None else cfg.get("processor.tokenizer") or {})
    if flag:
        return check_template(flag, key="--chat-template"), "--chat-template"
    if tok.get("chat_template"):
        return check_template(tok["chat_template"]), TEMPLATE_KEY
    found = recorded_template(adapter, cfg.get("load_checkpoint"), getattr(cfg, "source", None))
    if found is not None:
        return found[0], f"the template its training data was rendered with ({found[1]})"
    return (check_template(default_template(cfg.get("model.arch.type"), tok.get("type"))),
            "the model family's default")
