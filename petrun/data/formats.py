"""Instruction and chat records → turns {"role", "content"} for petrun/data/templates.py.

  alpaca    {instruction, input?, output, system?}: one user turn (the alpaca record, which the
            alpaca template wraps in Stanford Alpaca's prompt) and one assistant turn.
  sharegpt  {conversations: [{from, value}, ...], system?}: from human/user → user, gpt/assistant
            → assistant, system → system (first turn only). A leading gpt turn is dropped, as
            FastChat does. Tool turns (tool, function, function_call, observation) are refused by
            name: petrun's templates have no tool role, and folding a tool call or its result into
            a user or assistant turn would teach the model a format predict and chat never show.
  messages  OpenAI chat records {messages: [{role, content}, ...]}: roles system, user,
            assistant; tool/function/developer refused by name (as above; `developer` is OpenAI's
            newer name for system, so it is named in the refusal). content may be a string or a
            list of {type: text, text} parts, which are joined. An assistant message's `weight`
            (0 or 1, OpenAI's finetuning format) says whether it is trained on: weight 0 keeps
            the turn in the context but out of the loss; absent or null is 1.

Column names are configurable (train_dataset.columns) for files that spell them differently:
`columns` maps petrun's names (COLUMN_NAMES) to the file's. Every problem with a record is a
reason string: the caller counts and lists the record as bad, it never stops the run.
"""
from __future__ import annotations

from typing import Any, Mapping

CHAT_FORMATS = ("alpaca", "sharegpt", "messages")
# petrun's name → what it is; train_dataset.columns may map any of them to the file's name.
COLUMN_NAMES = {
    "instruction": "alpaca: the instruction", "input": "alpaca: the optional input",
    "output": "alpaca: the answer", "system": "alpaca/sharegpt: an optional system prompt",
    "conversations": "sharegpt: the list of turns", "from": "sharegpt: a turn's speaker",
    "value": "sharegpt: a turn's text", "messages": "messages: the list of turns",
    "role": "messages: a turn's role", "content": "messages: a turn's text",
    "weight": "messages: an assistant turn's weight (0: not trained on)",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")
_TOOL_WHY = ("petrun's chat templates have no tool role; drop tool turns (or such records) "
             "before training")


COLUMNS_KEY = "train_dataset.columns"


def check_columns(columns: Mapping[str, str] | None,
                  key: str = COLUMNS_KEY) -> tuple[tuple[str, str], ...]:
    """The column mapping as sorted pairs (picklable, hashable); UserError for a name petrun
    does not know or a value that is not a column name."""
    from petrun.errors import UserError

    if not columns:
        return ()
    if not isinstance(columns, Mapping):
        raise UserError(f"must map petrun's column names to the file's, got "
                        f"{type(columns).__name__}", key=key,
                        fix="e.g. {messages: chats, role: speaker, content: text}")
    for name, value in columns.items():
        if name not in COLUMN_NAMES:
            import difflib
            close = difflib.get_close_matches(str(name), list(COLUMN_NAMES), n=1)
            raise UserError(f"unknown column name '{name}'"
                            + (f" (did you mean '{close[0]}'?)" if close else ""),
                            key=f"{key}.{name}", fix=f"use: {', '.join(COLUMN_NAMES)}")
        if not isinstance(value, str) or not value:
            raise UserError(f"must be the file's column name (a string), got {value!r}",
                            key=f"{key}.{name}", fix=f"e.g. {name}: my_{name}")
    return tuple(sorted((str(k), str(v)) for k, v in columns.items()))


def column(columns: Mapping[str, str] | None, name: str) -> str:
    return (columns or {}).get(name, name)


def detect(record: Any, columns: Mapping[str, str] | None = None) -> str | None:
    """'messages', 'sharegpt', 'alpaca' or 'advertisegen' from one record's keys, else None."""
    if not isinstance(record, Mapping):
        return None
    c = lambda n: column(columns, n)   # noqa: E731
    if c("messages") in record:
        return "messages"
    if c("conversations") in record:
        return "sharegpt"
    if c("instruction") in record and c("output") in record:
        return "alpaca"
    if {"content", "summary"} <= set(record):
        return "advertisegen"
    return None


def _nonempty_text(value: Any, what: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{what} is empty"
    return None


def _system(record: Mapping, columns) -> tuple[list[dict], str | None]:
    name = column(columns, "system")
    value = record.get(name)
    if value is None or value == "":
        return [], None
    reason = _nonempty_text(value, f"field '{name}'")
    return ([] if reason else [{"role": "system", "content": value}]), reason


def alpaca_turns(record: Any, columns=None) -> tuple[list[dict] | None, str | None]:
    if not isinstance(record, Mapping):
        return None, ("expected an object with instruction/input/output, got "
                      f"{type(record).__name__}")
    names = {n: column(columns, n) for n in ("instruction", "input", "output")}
    for n in ("instruction", "output"):
        if names[n] not in record:
            return None, f"missing field '{names[n]}'"
        reason = _nonempty_text(record[names[n]], f"field '{names[n]}'")
        if reason:
            return None, reason
    inp = record.get(names["input"])
    if inp is not None and not isinstance(inp, str):
        return None, f"field '{names['input']}' must be a string, got {type(inp).__name__}"
    system, reason = _system(record, columns)
    if reason:
        return None, reason
    user = {"instruction": record[names["instruction"]], "input": inp or ""}
    return system + [{"role": "user", "content": user},
                     {"role": "assistant", "content": record[names["output"]]}], None


def _turn_list(record: Any, key: str) -> tuple[list | None, str | None]:
    """The record's non-empty list of turns under `key` (ShareGPT conversations, OpenAI messages)."""
    if not isinstance(record, Mapping) or key not in record:
        return None, f"missing field '{key}'"
    raw = record[key]
    if not isinstance(raw, list) or not raw:
        return None, f"'{key}' must be a non-empty list"
    return raw, None


def sharegpt_turns(record: Any, columns=None) -> tuple[list[dict] | None, str | None]:
    key = column(columns, "conversations")
    who, text = column(columns, "from"), column(columns, "value")
    raw, reason = _turn_list(record, key)
    if reason:
        return None, reason
    turns = []
    for j, t in enumerate(raw):
        if not isinstance(t, Mapping):
            return None, f"turn {j} is not an object with '{who}' and '{text}'"
        speaker = t.get(who)
        if speaker in TOOL_ROLES:
            return None, f"turn {j} is a '{speaker}' turn: {_TOOL_WHY}"
        if speaker not in SHAREGPT_ROLES:
            return None, (f"turn {j} has '{who}' = {speaker!r}; known: "
                          f"{', '.join(SHAREGPT_ROLES)} (tool turns are refused)")
        reason = _nonempty_text(t.get(text), f"turn {j}'s '{text}'")
        if reason:
            return None, reason
        turns.append({"role": SHAREGPT_ROLES[speaker], "content": t[text]})
    system, reason = _system(record, columns)
    if reason:
        return None, reason
    if system and turns[0]["role"] == "system":
        return None, f"a system prompt both in '{column(columns, 'system')}' and in the turns"
    head = 1 if turns[0]["role"] == "system" else 0
    if len(turns) > head and turns[head]["role"] == "assistant":
        del turns[head]   # a leading gpt turn is dropped, as FastChat does
    return _ordered(system + turns)


def _content(value: Any, what: str) -> tuple[str | None, str | None]:
    if isinstance(value, list):   # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for p in value:
            if not (isinstance(p, Mapping) and p.get("type") == "text"
                    and isinstance(p.get("text"), str)):
                kind = p.get("type") if isinstance(p, Mapping) else type(p).__name__
                return None, f"{what} has a {kind!r} part; only text parts are supported"
            parts.append(p["text"])
        value = "".join(parts)
    reason = _nonempty_text(value, what)
    return (None, reason) if reason else (value, None)


def messages_turns(record: Any, columns=None) -> tuple[list[dict] | None, str | None]:
    key = column(columns, "messages")
    role_key, text_key = column(columns, "role"), column(columns, "content")
    raw, reason = _turn_list(record, key)
    if reason:
        return None, reason
    turns = []
    for j, t in enumerate(raw):
        if not isinstance(t, Mapping):
            return None, f"message {j} is not an object with '{role_key}' and '{text_key}'"
        role = t.get(role_key)
        if role in TOOL_ROLES or role == "developer":
            why = ("use 'system' (petrun's templates know system, user, assistant)"
                   if role == "developer" else _TOOL_WHY)
            return None, f"message {j} has role '{role}': {why}"
        if role not in MESSAGE_ROLES:
            return None, (f"message {j} has '{role_key}' = {role!r}; known: "
                          f"{', '.join(MESSAGE_ROLES)}")
        text, reason = _content(t.get(text_key), f"message {j}'s '{text_key}'")
        if reason:
            return None, reason
        turn = {"role": role, "content": text}
        weight, reason = _weight(t, j, role, column(columns, "weight"))
        if reason:
            return None, reason
        if weight == 0:
            turn["weight"] = 0   # templates.split_turns: rendered, not trained on
        turns.append(turn)
    return _ordered(turns)


def _weight(message: Mapping, j: int, role: str, key: str) -> tuple[int, str | None]:
    """OpenAI's per-message weight: 0 or 1 on assistant messages (null = absent = 1; tables fill
    a column missing from some messages with null)."""
    value = message.get(key)
    if value is None:
        return 1, None
    if role != "assistant":
        return 1, (f"message {j} is a {role} message with a '{key}': only assistant messages "
                   "have one")
    if value not in (0, 1):
        return 1, f"message {j}'s '{key}' must be 0 or 1, got {value!r}"
    return int(value), None


def _ordered(turns: list[dict]) -> tuple[list[dict] | None, str | None]:
    """The order every template renders: [system], user, assistant, ..., ending in assistant."""
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    if not body:
        return None, "no user turn"
    for j, t in enumerate(body):
        want = ("user", "assistant")[j % 2]
        if t["role"] != want:
            at = j + len(turns) - len(body)
            extra = " (a system turn may only come first)" if t["role"] == "system" else ""
            return None, (f"turn {at} is {t['role']}, expected {want}{extra}: turns must "
                          "alternate user, assistant, ...")
    if body[-1]["role"] != "assistant":
        return None, "the conversation ends with a user turn: no answer to learn"
    return turns, None


_TURNS = {"alpaca": alpaca_turns, "sharegpt": sharegpt_turns, "messages": messages_turns}


def effective_format(fmt: str, record: Any, columns: Mapping[str, str] | None = None) -> str:
    """The alpaca format also takes ShareGPT records, as petrun always has (MindFormers'
    alpaca_converter output is one); they are ShareGPT records, rendered as such."""
    if fmt == "alpaca" and isinstance(record, Mapping) \
            and column(columns, "conversations") in record:
        return "sharegpt"
    return fmt


def to_turns(fmt: str, record: Any, columns: Mapping[str, str] | None = None
             ) -> tuple[list[dict] | None, str | None]:
    """(turns, None), or (None, why the record is unusable)."""
    return _TURNS[effective_format(fmt, record, columns)](record, columns)


def training_template(fmt: str, configured: str | None, family_default: str) -> str:
    """The template a training sample of format `fmt` is rendered with: the configured
    processor.tokenizer.chat_template, else the family's. Alpaca records keep the alpaca template
    (MindFormers' recipe); chat data under a family whose default is alpaca get vicuna: their user
    turns are messages, not instructions (predict and chat: --chat-template vicuna)."""
    if configured:
        return configured
    if fmt == "alpaca":
        return "alpaca"
    return "vicuna" if family_default == "alpaca" else family_default
