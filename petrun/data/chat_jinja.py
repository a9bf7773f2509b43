"""petrun's chat templates (petrun/data/templates.py) as the Jinja `chat_template` of a
Hugging Face tokenizer_config.json, so `tokenizer.apply_chat_template(messages)` renders what
petrun trains on and predicts with.

The strings (vicuna's system prompt and roles, the Alpaca instruction prompt, ChatGLM2's rounds)
are templates.py's own constants; only the control flow is written again here, in Jinja, because a
transformers tokenizer runs Jinja and nothing else. tests/ckpt/test_export.py renders both with
transformers and compares text and ids for single- and multi-turn conversations.

Special tokens: templates.py's "bos" segment is `bos_token`, "eos" is `eos_token` (both from
tokenizer_config.json), and "prefix" is the tokenizer's add_special_tokens prefix written out
(ChatGLM2's "[gMASK]sop"), passed in as `prefix`. Every literal is a Jinja string expression, so
transformers' trim_blocks/lstrip_blocks cannot eat a newline of it.
"""
from __future__ import annotations

import json

from petrun.data.templates import (GLM2_ROUND, GLM2_ROUND_SEP, PROMPT_NO_INPUT, TEMPLATES,
                                   VICUNA_ROLES, VICUNA_SEP, VICUNA_SYSTEM, check_template)


def _lit(text: str) -> str:
    """A Jinja string literal for `text` (JSON escapes are Jinja's too)."""
    return json.dumps(text, ensure_ascii=False)


_CONTENT = "message['content']"


def _order(system: bool) -> str:
    """Refuse what templates.split_turns refuses: roles out of order, a system turn where the
    template has none."""
    bad_system = "" if system else (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{ raise_exception('this template has no system turn') }}{%- endif -%}")
    return (bad_system
            + "{%- set offset = 1 if messages and messages[0]['role'] == 'system' else 0 -%}"
            "{%- for message in messages[offset:] -%}"
            "{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
            "{{ raise_exception('turns must be [system], user, assistant, user, ...') }}"
            "{%- endif -%}{%- endfor -%}")


def _vicuna(wrap: bool) -> str:
    user, assistant = VICUNA_ROLES
    if wrap:   # a user turn is the Alpaca instruction (no-input form, as for a plain string)
        before, after = PROMPT_NO_INPUT.split("{instruction}")
        question = f"{_lit(before)} + {_CONTENT} + {_lit(after)}"
    else:
        question = _CONTENT
    return (_order(True)
            + "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set head = messages[0]['content'] -%}{%- else -%}"
            f"{{%- set head = {_lit(VICUNA_SYSTEM)} -%}}{{%- endif -%}}"
            "{{ bos_token }}"
            "{%- for message in messages[offset:] -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{%- if loop.first -%}}{{{{ head + {_lit(VICUNA_SEP)} }}}}{{%- endif -%}}"
            f"{{{{ {_lit(user + ': ')} + {question} + {_lit(VICUNA_SEP + assistant + ':')} }}}}"
            "{%- else -%}"
            f"{{{{ ' ' + {_CONTENT} + eos_token }}}}"
            "{%- endif -%}{%- endfor -%}")


def _glm2(prefix: str) -> str:
    before, after = GLM2_ROUND.split("{prompt}")
    head, tail = before.split("{round}")
    return (_order(False)
            + f"{{{{ {_lit(prefix)} }}}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{%- if not loop.first -%}}{{{{ {_lit(GLM2_ROUND_SEP)} }}}}{{%- endif -%}}"
            f"{{{{ {_lit(head)} + ((loop.index0 // 2) + 1) | string + {_lit(tail)} + "
            f"{_CONTENT} + {_lit(after)} }}}}"
            "{%- else -%}"
            f"{{{{ {_CONTENT} }}}}{{%- if loop.last -%}}{{{{ eos_token }}}}{{%- endif -%}}"
            "{%- endif -%}{%- endfor -%}")


def _none() -> str:
    return (_order(True)
            + "{{ bos_token }}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'assistant' -%}"
            f"{{{{ {_CONTENT} + eos_token }}}}"
            f"{{%- else -%}}{{{{ {_CONTENT} }}}}{{%- endif -%}}"
            "{%- endfor -%}")


def jinja_template(name: str, prefix: str = "") -> str:
    """The Jinja chat template rendering petrun's template `name`; `prefix` is the text of the
    tokenizer's special prefix (used by templates that start with it: glm2)."""
    check_template(name)
    builders = {"alpaca": lambda: _vicuna(True), "vicuna": lambda: _vicuna(False),
                "glm2": lambda: _glm2(prefix), "none": _none}
    missing = sorted(set(TEMPLATES) - set(builders))
    if name in missing:   # a template added to templates.py without its Jinja twin here
        from petrun.errors import UserError
        raise UserError(f"chat template {name!r} has no Jinja form for export yet",
                        key="processor.tokenizer.chat_template",
                        fix=f"export with one of {', '.join(sorted(builders))}, or add its "
                            "Jinja form to petrun/data/chat_jinja.py")
    return builders[name]()
