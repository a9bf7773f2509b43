"""Golden tests: alpaca → vicuna_v1.1 → input_ids/labels, against a hand computation.

The expected arrays are built here from tokenizer.encode of the documented pieces
(reference/mindformers.md §7.1), with the template text written out again on purpose, so a typo
in petrun/data/alpaca.py cannot make both sides agree.
"""
from __future__ import annotations

import io
import json

import pytest

from petrun.data import alpaca
from petrun.errors import UserError

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
              "further context. Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:")
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{}\n\n### Response:")
IGN = -100

RECORDS = [
    {"instruction": "Reverse the letters of the word.", "input": "garden", "output": "nedrag"},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Write a short greeting.", "output": "Hello, friend! Nice to see you."},
    {"instruction": "Sort the numbers.", "input": "9, 3, 27", "output": "3, 9, 27"},
]


def expected(tok, prompt: str, answer: str, seq_length: int):
    """[bos] + enc(round) + [eos] + pad; labels keep enc(round) after the prompt, and eos."""
    head = f"{SYSTEM} USER: {prompt} ASSISTANT:"
    round_ids = tok.encode(f"{head} {answer}")
    # The documented rule: prompt = len(tokenizer(head + " ") with bos and eos) - 3
    n_prompt = len(tok.encode(head + " ")) + 2 - 3
    total = seq_length + 1
    ids = [1] + round_ids + [2]
    labels = [IGN] + [IGN] * n_prompt + round_ids[n_prompt:] + [2]
    pad = total - len(ids)
    return ids + [0] * pad, labels + [IGN] * pad


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["output"][:8])
def test_alpaca_golden(demo_tokenizer, record):
    tok = demo_tokenizer
    inp = record.get("input", "")
    prompt = (WITH_INPUT.format(record["instruction"], inp) if inp
              else NO_INPUT.format(record["instruction"]))
    want_ids, want_labels = expected(tok, prompt, record["output"], 128)

    sample = alpaca.tokenize_alpaca_record(record, tok, 128)
    assert sample.input_ids == want_ids
    assert sample.labels == want_labels
    assert len(sample.input_ids) == len(sample.labels) == 129
    assert not sample.truncated and not sample.fully_masked
    # What is supervised is exactly the answer followed by eos.
    kept = [t for t in sample.labels if t != IGN]
    assert kept[-1] == 2 and tok.decode(kept) == record["output"]


def test_conversation_record_matches_alpaca_converter(demo_tokenizer):
    conv = alpaca.alpaca_to_conversation(RECORDS[0], 6)
    assert conv["id"] == "7"
    assert conv["conversations"] == [
        {"from": "human", "value": WITH_INPUT.format("Reverse the letters of the word.", "garden")},
        {"from": "gpt", "value": "nedrag"}]
    text = alpaca.vicuna_text(conv["conversations"])
    assert text == f"{SYSTEM} USER: {conv['conversations'][0]['value']} ASSISTANT: nedrag</s>"


def test_two_round_conversation(demo_tokenizer):
    tok = demo_tokenizer
    turns = [{"from": "human", "value": "Add 2 and 3."}, {"from": "gpt", "value": "5"},
             {"from": "human", "value": "And 4 and 4?"}, {"from": "gpt", "value": "8"}]
    r1, r2 = f"{SYSTEM} USER: Add 2 and 3. ASSISTANT: 5", "USER: And 4 and 4? ASSISTANT: 8"
    e1, e2 = tok.encode(r1), tok.encode(r2)
    p1 = len(tok.encode(f"{SYSTEM} USER: Add 2 and 3. ASSISTANT: ")) - 1
    p2 = len(tok.encode("USER: And 4 and 4? ASSISTANT: ")) - 1
    ids = [1] + e1 + [2] + e2 + [2]
    labels = [IGN] + [IGN] * p1 + e1[p1:] + [2] + [IGN] * p2 + e2[p2:] + [2]
    s = alpaca.tokenize_conversation(turns, tok, 120)
    pad = 121 - len(ids)
    assert s.input_ids == ids + [0] * pad
    assert s.labels == labels + [IGN] * pad
    # both answers (each "▁"-prefixed) and their eos, nothing else
    assert tok.decode([t for t in s.labels if t != IGN]) == "5 8"
    assert [t for t in s.labels if t != IGN].count(2) == 2


def test_truncation_keeps_the_mask(demo_tokenizer):
    tok = demo_tokenizer
    rec = {"instruction": "Write the text in capital letters.", "input": "apple table",
           "output": "APPLE TABLE " * 5}
    full = alpaca.tokenize_alpaca_record(rec, tok, 1024)
    n = full.num_tokens
    seq = n - 10          # 9 tokens (answer tail and eos) fall off the end
    cut = alpaca.tokenize_alpaca_record(rec, tok, seq)
    assert cut.truncated and not cut.fully_masked and not full.truncated
    assert cut.input_ids == full.input_ids[:seq + 1]
    assert cut.labels == full.labels[:seq + 1]
    assert 2 not in cut.labels and cut.labels[-1] != IGN


def test_whole_sample_masked_when_lengths_disagree(demo_tokenizer, tmp_path):
    # An answer containing the assistant separator breaks the per-round split: MindFormers then
    # masks the whole sample instead of training on a misaligned one.
    rec = {"instruction": "Quote it.", "input": "", "output": "He said ASSISTANT: hello"}
    s = alpaca.tokenize_alpaca_record(rec, demo_tokenizer, 128)
    assert s.fully_masked and set(s.labels) == {IGN}
    assert s.input_ids[0] == 1 and 2 in s.input_ids     # input_ids are still the full text


def test_unk_tokens_mask_the_sample(tmp_path):
    # Without byte fallback an unseen character becomes unk (id 0 = pad), so the non-pad count
    # disagrees with the mask arithmetic: the whole sample is masked, as in MindFormers.
    import sentencepiece as spm

    from petrun.data.tokenizer import SentencePieceTokenizer

    buf = io.BytesIO()
    corpus = [f"{SYSTEM} USER: word {i} ASSISTANT: answer {i}" for i in range(50)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf,
                                   vocab_size=80, model_type="bpe", character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   num_threads=1, hard_vocab_limit=False,
                                   # Llama keeps whitespace as written (the "▁" rule needs it)
                                   normalization_rule_name="identity",
                                   remove_extra_whitespaces=False)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    tok = SentencePieceTokenizer(path)

    def turns(answer):
        return [{"from": "human", "value": "word 3"}, {"from": "gpt", "value": answer}]

    ok = alpaca.tokenize_conversation(turns("answer 3"), tok, 200)
    bad = alpaca.tokenize_conversation(turns("answer €"), tok, 200)
    assert not ok.truncated and not bad.truncated
    assert 0 not in ok.input_ids[:ok.num_tokens] and 0 in bad.input_ids[:bad.num_tokens]
    assert not ok.fully_masked and tok.decode([t for t in ok.labels if t != IGN]) == "answer 3"
    assert bad.fully_masked and set(bad.labels) == {IGN}


def test_bad_records_are_reported_not_fatal(demo_tokenizer):
    records = [
        RECORDS[0],
        "just a string",
        {"instruction": "No output here."},
        {"instruction": 5, "output": "x"},
        {"instruction": "Empty answer.", "output": "   "},
        {"instruction": "Numeric input.", "input": 7, "output": "x"},
        {"instruction": "", "output": "x"},
        RECORDS[1],
        {"instruction": "Null input is no input.", "input": None, "output": "ok"},
    ]
    prepared = alpaca.prepare_alpaca(records, demo_tokenizer, 128)
    assert [b.index for b in prepared.bad] == [1, 2, 3, 4, 5, 6]
    assert "output" in prepared.bad[1].reason and "instruction" in prepared.bad[2].reason
    assert len(prepared.samples) == 3
    assert prepared.samples[0].input_ids == alpaca.tokenize_alpaca_record(
        RECORDS[0], demo_tokenizer, 128).input_ids
    assert prepared.stats()["samples"] == 3 and prepared.stats()["bad_records"] == 6


def test_load_alpaca_records(tmp_path):
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps(RECORDS))
    as_lines = tmp_path / "a.jsonl"
    as_lines.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    assert alpaca.load_alpaca_records(as_list) == RECORDS
    assert alpaca.load_alpaca_records(as_lines) == RECORDS

    broken = tmp_path / "b.json"
    broken.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(UserError) as e:
        alpaca.load_alpaca_records(broken, key="data.input")
    assert "line 2" in e.value.message and e.value.file == str(broken) and e.value.fix
    with pytest.raises(UserError):
        alpaca.load_alpaca_records(tmp_path / "missing.json")
