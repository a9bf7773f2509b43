"""Build petrun's bundled demo data in data/demo/ (deterministic, no downloads).

    .venv/bin/python scripts/make_demo_data.py

Writes, each file atomically:
  alpaca_demo.json             ~300 alpaca-style records written for petrun from simple templates
                               (arithmetic, reversal, plurals, capitals, sorting, antonyms, ...)
                               so that a tiny model can visibly learn them;
  tokenizer.model              a SentencePiece BPE model trained on that corpus with Llama's
                               conventions (unk 0, bos 1, eos 2, byte fallback, split digits);
  alpaca_demo_seq256.jsonl     the records tokenized by petrun.data.alpaca for seq_length 256
                               (257 tokens per sample: input_ids and labels);
  alpaca_demo_glm2_seq256.jsonl
                               the same samples pre-shifted the way MindFormers' GLM2 data come
                               (256 tokens: input_ids = ids[:-1], labels = labels[1:]), for
                               ChatGLM2, whose loss does not shift.
Re-running reproduces the same bytes.
"""
from __future__ import annotations

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from petrun.atomic import write_bytes_atomic  # noqa: E402
from petrun.data import alpaca  # noqa: E402
from petrun.data.mindrecord import write_jsonl  # noqa: E402
from petrun.data.sp_train import train_sentencepiece  # noqa: E402
from petrun.data.tokenizer import SentencePieceTokenizer  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
SEED = 20240611
SEQ_LENGTH = 256
VOCAB_SIZE = 512

# Word pools, written for this project.
WORDS = [
    "apple", "table", "garden", "river", "window", "pencil", "orange", "silver", "castle",
    "rabbit", "summer", "winter", "planet", "yellow", "basket", "candle", "forest", "bridge",
    "dinner", "flower", "guitar", "hammer", "island", "jacket", "kitten", "ladder", "marble",
    "needle", "pepper", "rocket", "saddle", "tunnel", "violin", "wallet", "zebra", "cloud",
    "stone", "bread", "chair", "dream", "horse", "lemon", "music", "ocean", "paper", "queen",
    "radio", "smile", "tiger", "water", "house", "light", "green", "happy", "money", "night",
    "plant", "sound", "train", "world", "cat", "dog", "sun", "map", "cup", "hat", "pen", "box",
    "fish", "tree", "bird", "book", "door", "milk", "rain", "snow", "star", "ship", "road",
]
PLURALS = {
    "cat": "cats", "dog": "dogs", "book": "books", "tree": "trees", "apple": "apples",
    "table": "tables", "river": "rivers", "window": "windows", "pencil": "pencils",
    "garden": "gardens", "horse": "horses", "candle": "candles", "ladder": "ladders",
    "box": "boxes", "fox": "foxes", "bus": "buses", "dish": "dishes", "brush": "brushes",
    "glass": "glasses", "watch": "watches", "bench": "benches", "peach": "peaches",
    "city": "cities", "baby": "babies", "story": "stories", "party": "parties",
    "berry": "berries", "lady": "ladies", "pony": "ponies", "cherry": "cherries",
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "foot": "feet",
    "tooth": "teeth", "goose": "geese", "ox": "oxen", "sheep": "sheep", "deer": "deer",
    "leaf": "leaves", "knife": "knives", "wolf": "wolves", "half": "halves", "shelf": "shelves",
}
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"),
    ("open", "closed"), ("light", "dark"), ("early", "late"), ("full", "empty"),
    ("hard", "soft"), ("high", "low"), ("long", "short"), ("old", "new"), ("rich", "poor"),
    ("strong", "weak"), ("wet", "dry"), ("thick", "thin"), ("loud", "quiet"),
    ("clean", "dirty"), ("near", "far"), ("true", "false"), ("win", "lose"), ("day", "night"),
    ("push", "pull"), ("buy", "sell"), ("inside", "outside"), ("first", "last"),
    ("heavy", "light"), ("young", "old"), ("top", "bottom"), ("good", "bad"),
    ("left", "right"), ("begin", "end"), ("give", "take"), ("laugh", "cry"),
]


def _numbers(rng: random.Random, k: int, lo: int = 1, hi: int = 40) -> list[int]:
    return rng.sample(range(lo, hi), k)


def task_add(rng):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return "Add the two numbers.", f"{a} + {b}", str(a + b)


def task_add_question(rng):
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return f"What is {a} plus {b}?", "", str(a + b)


def task_subtract(rng):
    a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
    return "Subtract the second number from the first.", f"{a} - {b}", str(a - b)


def task_reverse(rng):
    w = rng.choice(WORDS)
    return "Reverse the letters of the word.", w, w[::-1]


def task_plural(rng):
    w = rng.choice(sorted(PLURALS))
    return "Write the plural of the noun.", w, PLURALS[w]


def task_upper(rng):
    w = " ".join(rng.sample(WORDS, rng.choice((1, 2))))
    return "Write the text in capital letters.", w, w.upper()


def task_sort(rng):
    nums = _numbers(rng, rng.randint(3, 5))
    return ("Sort the numbers from smallest to largest.", ", ".join(map(str, nums)),
            ", ".join(map(str, sorted(nums))))


def task_largest(rng):
    nums = _numbers(rng, rng.randint(3, 5), 1, 100)
    return "Which number is the largest?", ", ".join(map(str, nums)), str(max(nums))


def task_antonym(rng):
    a, b = rng.choice(ANTONYMS)
    if rng.random() < 0.5:
        a, b = b, a
    return "Give the opposite of the word.", a, b


def task_antonym_question(rng):
    a, b = rng.choice(ANTONYMS)
    return f"What is the opposite of \"{a}\"?", "", f"The opposite of \"{a}\" is \"{b}\"."


def task_count(rng):
    w = rng.choice(WORDS)
    return "How many letters are in the word?", w, str(len(w))


def task_first_letter(rng):
    w = rng.choice(WORDS)
    return "What is the first letter of the word?", w, w[0]


# (generator, number of distinct records)
TASKS = [
    (task_add, 35), (task_add_question, 15), (task_subtract, 25), (task_reverse, 30),
    (task_plural, 28), (task_upper, 30), (task_sort, 30), (task_largest, 20),
    (task_antonym, 30), (task_antonym_question, 17), (task_count, 25), (task_first_letter, 15),
]


PRETRAIN_SEED = SEED + 1
PRETRAIN_SCALE = 3   # the base model's corpus: 3x the finetune set, disjoint from it


def make_records(seed: int = SEED, scale: int = 1, exclude: frozenset = frozenset()) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records, seen = [], set(exclude)
    for gen, base_count in TASKS:
        count = base_count * scale
        made = tries = 0
        # Some templates have few distinct prompts: stop after enough failed draws rather than
        # loop forever (the finetune set, scale 1, always fills; the larger corpus may not).
        while made < count and tries < 50 * count:
            tries += 1
            instruction, inp, out = gen(rng)
            if (instruction, inp) in seen:
                continue
            seen.add((instruction, inp))
            records.append({"instruction": instruction, "input": inp, "output": out})
            made += 1
    rng.shuffle(records)   # interleave tasks so any prefix of the file is a fair sample
    return records


def training_text(records: list[dict[str, str]]) -> list[str]:
    """The exact strings the tokenizer will see: each vicuna round of each record."""
    texts = []
    for i, rec in enumerate(records):
        turns = alpaca.alpaca_to_conversation(rec, i)["conversations"]
        texts += [r for r in alpaca.vicuna_text(turns).split(alpaca.VICUNA_SEP2) if r]
    return texts


def train_tokenizer(texts: list[str]) -> bytes:
    # Llama's settings (petrun.data.sp_train, also behind `petrun data train-tokenizer`).
    return train_sentencepiece(texts, VOCAB_SIZE)


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    records = make_records()
    write_bytes_atomic(os.path.join(OUT_DIR, "alpaca_demo.json"),
                 (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))

    model_path = os.path.join(OUT_DIR, "tokenizer.model")
    write_bytes_atomic(model_path, train_tokenizer(training_text(records)))
    tok = SentencePieceTokenizer(model_path)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)

    prepared = alpaca.prepare_alpaca(records, tok, SEQ_LENGTH)
    assert not prepared.bad, prepared.bad
    data_path = os.path.join(OUT_DIR, f"alpaca_demo_seq{SEQ_LENGTH}.jsonl")
    write_jsonl(data_path, (s.as_dict() for s in prepared.samples), overwrite=True)
    # GLM2 (MindFormers' ADGen convention): labels already shifted, seq_length tokens per sample.
    write_jsonl(os.path.join(OUT_DIR, f"alpaca_demo_glm2_seq{SEQ_LENGTH}.jsonl"),
                ({"input_ids": s.input_ids[:-1], "labels": s.labels[1:]} for s in prepared.samples),
                overwrite=True)

    # Pretraining corpus for the tiny base model (scripts/make_demo_base.sh): other records of the
    # same tasks, every real token supervised (plain language modelling), padding ignored.
    taken = frozenset((r["instruction"], r["input"]) for r in records)
    pre = alpaca.prepare_alpaca(make_records(PRETRAIN_SEED, PRETRAIN_SCALE, taken), tok, SEQ_LENGTH)
    assert not pre.bad, pre.bad
    lm = ({"input_ids": s.input_ids,
           "labels": [t if i < s.num_tokens else alpaca.IGNORE_TOKEN_ID for i, t in enumerate(s.input_ids)]}
          for s in pre.samples)
    write_jsonl(os.path.join(OUT_DIR, f"pretrain_demo_seq{SEQ_LENGTH}.jsonl"), lm, overwrite=True)

    stats = prepared.stats()
    unk = sum(t == tok.unk_id for s in prepared.samples for t in s.input_ids[:s.num_tokens])
    print(f"records {len(records)}  vocab {tok.vocab_size}  seq_length {SEQ_LENGTH}")
    print(f"tokens per sample: mean {stats['mean_tokens']:.1f}  max {stats['max_tokens']}  "
          f"truncated {stats['truncated']}  fully masked {stats['fully_masked']}  unk {unk}")
    total = sum(os.path.getsize(os.path.join(OUT_DIR, f)) for f in os.listdir(OUT_DIR))
    print(f"wrote {OUT_DIR} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
