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

The template comes from --chat-template, else processor.tokenizer.chat_template, else the
model family's finetune format (`default_template`).
"""
from __future__ import annotations

from typing import Any, Mapping

from petrun.data.templates import (TEMPLATE_KEY, TEMPLATES, check_template, default_template,
                                   to_text)
from petrun.data.templates import render as render_turns

__all__ = ["TEMPLATE_KEY", "TEMPLATES", "check_template", "default_template", "encode_prompt",
           "render"]


def render(template: str, prompt: str | Mapping[str, Any]) -> str:
    """One user prompt (a string, or an alpaca record {instruction, input}) rendered with
    petrun.data.templates, left open where the training answer began."""
    turns = [{"role": "user", "content": prompt}]
    return to_text(render_turns(check_template(template), turns, add_generation_prompt=True))


def encode_prompt(template: str, prompt: str | Mapping[str, Any], tokenizer) -> list[int]:
    """Token ids of the rendered prompt after bos, as every training sample begins."""
    return tokenizer.encode(render(template, prompt), add_bos=True)
