"""Prompt templates: wrap a user's prompt the way the training data wrapped it.

A model finetuned on formatted conversations answers well only when asked in the same format, so
`petrun predict --prompt` renders the prompt with the template of the training data and stops
right where the training answer began:

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

from petrun.data.alpaca import VICUNA_ROLES, VICUNA_SEP, VICUNA_SYSTEM, alpaca_prompt
from petrun.errors import UserError

TEMPLATE_KEY = "processor.tokenizer.chat_template"
GLM2_PROMPT = "[Round {round}]\n\n问：{prompt}\n\n答："


def _vicuna(user_text: str) -> str:
    # The generation-time counterpart of petrun.data.alpaca.vicuna_text: the assistant turn is
    # left open ("ASSISTANT:"), exactly as FastChat renders an empty last message.
    user, assistant = VICUNA_ROLES
    return f"{VICUNA_SYSTEM}{VICUNA_SEP}{user}: {user_text}{VICUNA_SEP}{assistant}:"


def render_alpaca(prompt: str | Mapping[str, Any]) -> str:
    record = dict(prompt) if isinstance(prompt, Mapping) else {"instruction": prompt}
    return _vicuna(alpaca_prompt(record))


def render_vicuna(prompt: str | Mapping[str, Any]) -> str:
    return _vicuna(_text(prompt))


def render_glm2(prompt: str | Mapping[str, Any]) -> str:
    return GLM2_PROMPT.format(round=1, prompt=_text(prompt))


def render_none(prompt: str | Mapping[str, Any]) -> str:
    return _text(prompt)


TEMPLATES = {"alpaca": render_alpaca, "vicuna": render_vicuna, "glm2": render_glm2,
             "none": render_none}



def _text(prompt: str | Mapping[str, Any]) -> str:
    """A plain prompt; an alpaca record becomes its instruction (+ blank line + input)."""
    if isinstance(prompt, Mapping):
        text = str(prompt.get("instruction") or prompt.get("prompt") or "")
        if prompt.get("input"):
            text += "\n\n" + str(prompt["input"])
        return text
    return prompt


def default_template(arch: str, tokenizer_type: str | None = None) -> str:
    """The family's finetune format. A ChatGLM2 model with a Llama tokenizer was trained on data
    prepared the Llama way (the bundled demo data), so it gets the alpaca template."""
    if arch in ("ChatGLM2ForConditionalGeneration", "ChatGLM2WithPtuning2") and \
            tokenizer_type in ("LlamaTokenizer", "LlamaTokenizerFast"):
        return "alpaca"
    from petrun.models.registry import known_archs, arch_entry
    return arch_entry(arch).chat_template if arch in known_archs() else "none"


def check_template(name: str, key: str = TEMPLATE_KEY) -> str:
    if name not in TEMPLATES:
        raise UserError(f"unknown chat template {name!r}", key=key,
                        fix=f"use one of: {', '.join(TEMPLATES)} (petrun's named templates; "
                            "Jinja templates are not supported)")
    return name


def render(template: str, prompt: str | Mapping[str, Any]) -> str:
    return TEMPLATES[check_template(template)](prompt)


def encode_prompt(template: str, prompt: str | Mapping[str, Any], tokenizer) -> list[int]:
    """Token ids of the rendered prompt after bos, as every training sample begins."""
    return tokenizer.encode(render(template, prompt), add_bos=True)
