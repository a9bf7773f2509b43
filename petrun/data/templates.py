"""The multi-turn chat templates: one definition that training data, `petrun predict` and
`petrun chat` all render conversations with.

A conversation is a list of turns, each a mapping {"role": "system" | "user" | "assistant",
"content": str} (an optional system turn first, then user and assistant alternating, starting with
user). `render(template, turns, add_generation_prompt)` returns Segments: text to encode, flagged
trainable (the loss is taken on it) or not, and the special tokens ("bos" = the tokenizer's bos id,
"prefix" = its add_special_tokens prefix, "eos") by name, since they are ids and not text. An
assistant turn with "weight": 0 (OpenAI messages, data/formats.py) is rendered but not trainable.

  alpaca  FastChat's vicuna_v1.1 conversation (below) whose user turns are Stanford Alpaca
          instructions: a string becomes the instruction, a mapping {instruction, input} an
          alpaca record (MindFormers' alpaca_converter, reference/mindformers.md §7.1).
  vicuna  "{system} USER: {user} ASSISTANT: {answer}</s>USER: ..." — the system turn replaces
          vicuna's default system prompt. Each round (up to its </s>) is encoded as one text, as
          MindFormers' llama_preprocess does (`encoding == "rounds"`).
  glm2    ChatGLM2's build_prompt, "[Round i]\\n\\n问：{user}\\n\\n答：{answer}\\n\\n" after the
          [gMASK] sop prefix, the last answer followed by eos; each segment encoded on its own, as
          MindFormers' AdvertiseGen preprocessing does. ChatGLM2 has no system role: refused.
  none    The texts as they are (GPT-2 language modelling): bos, then user and assistant texts
          back to back, eos after each answer; a system turn is untrained text before the first.

Pure Python (no tokenizer): petrun/data/conversation.py turns Segments into ids and labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from petrun.errors import UserError

TEMPLATE_KEY = "processor.tokenizer.chat_template"
ROLES = ("system", "user", "assistant")

# Stanford Alpaca's prompts, as used by MindFormers' alpaca_converter.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# FastChat vicuna_v1.1 (separator style "add colon two").
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = ("USER", "ASSISTANT")
VICUNA_SEP = " "
VICUNA_SEP2 = "</s>"

GLM2_ROUND = "[Round {round}]\n\n问：{prompt}\n\n答："
GLM2_ROUND_SEP = "\n\n"


class TemplateError(ValueError):
    """The turns do not make a conversation the template can render (order, roles)."""


@dataclass(frozen=True)
class Segment:
    text: str = ""
    trainable: bool = False
    special: str | None = None   # "bos", "prefix" or "eos": a token id, not text


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[Sequence[Mapping[str, Any]], bool], list[Segment]]
    # "rounds": each stretch of text between special tokens is encoded as one string and the
    # prompt/answer boundary found MindFormers' way; "segments": each segment encoded on its own.
    encoding: str
    system: bool                 # whether a system turn is rendered (else it is refused)
    summary: str


def alpaca_prompt(record: Mapping[str, Any]) -> str:
    """The Stanford Alpaca prompt; the with-input form whenever input is not the empty string."""
    # `input: null` is treated as absent (MindFormers would print "None" into the prompt).
    inp = record.get("input") or ""
    if inp != "":
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=inp)
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def _text(content: Any) -> str:
    """A turn's text; an alpaca record outside the alpaca template becomes its instruction
    (+ blank line + input)."""
    if isinstance(content, Mapping):
        text = str(content.get("instruction") or content.get("prompt") or "")
        if content.get("input"):
            text += "\n\n" + str(content["input"])
        return text
    return str(content)


def split_turns(turns: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
                system_allowed: bool = True) -> tuple[Any, list[tuple[Any, Any]], list[bool]]:
    """(system content or None, [(user, assistant or None)], [whether each answer is trained])
    after checking the order. An assistant turn with "weight": 0 (OpenAI's finetuning format) is
    rendered as usual but not trained on."""
    turns = list(turns)
    for j, t in enumerate(turns):
        if not isinstance(t, Mapping) or t.get("role") not in ROLES:
            role = t.get("role") if isinstance(t, Mapping) else t
            raise TemplateError(f"turn {j} has role {role!r}; petrun's templates know "
                                f"{', '.join(ROLES)}")
    system = None
    if turns and turns[0]["role"] == "system":
        if not system_allowed:
            raise TemplateError("this template has no system turn")
        system, turns = turns[0]["content"], turns[1:]
    if not turns:
        raise TemplateError("no user turn")
    pairs: list[tuple[Any, Any]] = []
    trained: list[bool] = []
    for j, t in enumerate(turns):
        want = "user" if j % 2 == 0 else "assistant"
        if t["role"] != want:
            where = "only first" if t["role"] == "system" else f"expected {want}"
            raise TemplateError(f"turn {j + (system is not None)} is {t['role']} ({where}): "
                                "turns must be [system], user, assistant, user, assistant, ...")
        if want == "user":
            pairs.append((t["content"], None))
            trained.append(True)
        else:
            pairs[-1] = (pairs[-1][0], t["content"])
            trained[-1] = t.get("weight", 1) != 0
    if add_generation_prompt and pairs[-1][1] is not None:
        raise TemplateError("the last turn must be the user's to add a generation prompt")
    return system, pairs, trained


def _vicuna_family(wrap: bool):
    def render(turns, add_generation_prompt):
        system, pairs, trained = split_turns(turns, add_generation_prompt)
        user, assistant = VICUNA_ROLES
        head = (VICUNA_SYSTEM if system is None else _text(system)) + VICUNA_SEP
        out = [Segment(special="bos")]
        for i, (q, a) in enumerate(pairs):
            q = alpaca_prompt(q if isinstance(q, Mapping) else {"instruction": q}) if wrap \
                else _text(q)
            prompt = (head if i == 0 else "") + f"{user}: {q}{VICUNA_SEP}{assistant}:"
            out.append(Segment(prompt))
            if a is not None:
                # The answer's leading space belongs to it: SentencePiece merges it into the first
                # answer token ("▁word"), so a generation prompt ends at the colon.
                out += [Segment(f" {_text(a)}", trained[i]),
                        Segment(special="eos", trainable=trained[i])]
        return out
    return render


def _glm2(turns, add_generation_prompt):
    _, pairs, trained = split_turns(turns, add_generation_prompt, system_allowed=False)
    out = [Segment(special="prefix")]
    for i, (q, a) in enumerate(pairs):
        out.append(Segment(("" if i == 0 else GLM2_ROUND_SEP)
                           + GLM2_ROUND.format(round=i + 1, prompt=_text(q))))
        if a is not None:
            out.append(Segment(_text(a), trained[i]))
    if pairs[-1][1] is not None:
        out.append(Segment(special="eos", trainable=trained[-1]))
    return out


def _none(turns, add_generation_prompt):
    system, pairs, trained = split_turns(turns, add_generation_prompt)
    out = [Segment(special="bos")]
    if system is not None:
        out.append(Segment(_text(system)))
    for (q, a), train in zip(pairs, trained):
        out.append(Segment(_text(q)))
        if a is not None:
            out += [Segment(_text(a), train), Segment(special="eos", trainable=train)]
    return out


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("alpaca", _vicuna_family(True), "rounds", True,
             "vicuna_v1.1 conversation, user turns as Stanford Alpaca instructions"),
    Template("vicuna", _vicuna_family(False), "rounds", True,
             "FastChat vicuna_v1.1: '{system} USER: ... ASSISTANT: ...</s>'"),
    Template("glm2", _glm2, "segments", False,
             "ChatGLM2: '[Round i]\\n\\n问：...\\n\\n答：...'"),
    Template("none", _none, "segments", True, "the texts as they are"),
)}


def check_template(name: str, key: str = TEMPLATE_KEY) -> str:
    if name not in TEMPLATES:
        raise UserError(f"unknown chat template {name!r}", key=key,
                        fix=f"use one of: {', '.join(TEMPLATES)} (petrun's named templates; "
                            "Jinja templates are not supported)")
    return name


def default_template(arch: str, tokenizer_type: str | None = None) -> str:
    """The family's finetune format. A ChatGLM2 model with a Llama tokenizer was trained on data
    prepared the Llama way (the bundled demo data), so it gets the alpaca template."""
    if arch in ("ChatGLM2ForConditionalGeneration", "ChatGLM2WithPtuning2") and \
            tokenizer_type in ("LlamaTokenizer", "LlamaTokenizerFast"):
        return "alpaca"
    from petrun.models.registry import arch_entry, known_archs
    return arch_entry(arch).chat_template if arch in known_archs() else "none"


def render(template: str, turns: Sequence[Mapping[str, Any]],
           add_generation_prompt: bool = False) -> list[Segment]:
    """The conversation as Segments. TemplateError when the turns are out of order or use a role
    the template lacks; UserError for an unknown template name."""
    return TEMPLATES[check_template(template)].render(turns, add_generation_prompt)


def to_text(segments: Sequence[Segment], eos: str = VICUNA_SEP2) -> str:
    """The segments' text, eos written as `eos`; bos/prefix left out (they are ids)."""
    return "".join(eos if s.special == "eos" else s.text for s in segments if
                   s.special in (None, "eos"))
