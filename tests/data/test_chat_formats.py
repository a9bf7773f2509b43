"""Issue 19 (datasets): alpaca, ShareGPT and OpenAI messages records, from JSON, JSON lines, Parquet
and Hugging Face save_to_disk folders, → input_ids/labels with the loss on assistant tokens only.

The expected arrays are computed here by hand from tokenizer.encode of the documented pieces
(MindFormers' llama_preprocess qa rule for vicuna rounds, reference/mindformers.md §7.1; ChatGLM2's
build_prompt for glm2), with the template text written out again on purpose. Parquet files are
written with pyarrow and save_to_disk folders with the `datasets` library, so the reader is checked
against independent writers.
"""
from __future__ import annotations

import json
import os

import pytest

from petrun.data import conversation, formats
from petrun.data import prepare as prep
from petrun.data.records import read_records
from petrun.data.templates import TemplateError, render, to_text
from petrun.errors import UserError

SEQ = 160
IGN = -100
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
              "further context. Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:")

# The same two conversations in the three formats: one with a system turn and two rounds, one
# single round without a system turn.
CHATS = [("You are terse.", [("Add 2 and 3.", "5"), ("And 4 and 4?", "8")]),
         (None, [("Name a colour.", "Blue.")])]
ALPACA = [{"instruction": "Reverse the letters of the word.", "input": "garden", "output": "nedrag"},
          {"instruction": "What is 12 plus 30?", "output": "42"}]


def sharegpt(chats=CHATS, who="from", text="value", key="conversations"):
    out = []
    for system, pairs in chats:
        turns = [{who: "system", text: system}] if system else []
        for q, a in pairs:
            turns += [{who: "human", text: q}, {who: "gpt", text: a}]
        out.append({key: turns})
    return out


def messages(chats=CHATS, key="messages", role="role", content="content"):
    out = []
    for system, pairs in chats:
        turns = [{role: "system", content: system}] if system else []
        for q, a in pairs:
            turns += [{role: "user", content: q}, {role: "assistant", content: a}]
        out.append({key: turns})
    return out


def vicuna_hand(tok, system, pairs, seq_length=SEQ):
    """[bos] + per round enc(round) + [eos]; each round's first len(enc(prompt + " ")) - 1 tokens
    masked (MindFormers' qa rule), the answer and its eos kept."""
    ids, labels = [1], [IGN]
    for i, (q, a) in enumerate(pairs):
        prompt = ((system or SYSTEM) + " " if i == 0 else "") + f"USER: {q} ASSISTANT:"
        body = tok.encode(f"{prompt} {a}")
        n = len(tok.encode(prompt + " ")) - 1
        ids += body + [2]
        labels += [IGN] * n + body[n:] + [2]
    pad = seq_length + 1 - len(ids)
    return ids + [0] * pad, labels + [IGN] * pad


def alpaca_hand(tok, rec):
    q = (WITH_INPUT.format(rec["instruction"], rec["input"]) if rec.get("input")
         else NO_INPUT.format(rec["instruction"]))
    return vicuna_hand(tok, None, [(q, rec["output"])])


def write(container, records, folder):
    """The records as a JSON list, JSON lines, Parquet (pyarrow) or save_to_disk (datasets)."""
    if container == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1))
    elif container == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    elif container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        datasets = pytest.importorskip("datasets")
        path = folder / "hf"
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return str(path)


@pytest.fixture
def tok_cfg(demo_dir):
    return {"type": "LlamaTokenizer", "vocab_file": os.path.join(demo_dir, "tokenizer.model")}


def run_prepare(tmp_path, fmt, src, tok_cfg, **kw):
    out = tmp_path / "out.jsonl"
    report = prep.prepare(fmt, src, str(out), tokenizer=tok_cfg, seq_length=SEQ,
                          overwrite=True, **kw)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return report, [(r["input_ids"], r["labels"]) for r in rows]


CONTAINERS = ("json", "jsonl", "parquet", "save_to_disk")


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("fmt", ("alpaca", "sharegpt", "messages"))
def test_format_by_container_gives_the_hand_computed_samples(tmp_path, demo_tokenizer, tok_cfg,
                                                             fmt, container):
    records = {"alpaca": ALPACA, "sharegpt": sharegpt(), "messages": messages()}[fmt]
    src = write(container, records, tmp_path)
    report, rows = run_prepare(tmp_path, fmt, src, tok_cfg)
    want = ([alpaca_hand(demo_tokenizer, r) for r in ALPACA] if fmt == "alpaca"
            else [vicuna_hand(demo_tokenizer, s, p) for s, p in CHATS])
    assert report.bad == [] and report.written == 2
    assert rows == [tuple(map(list, w)) for w in want]


def test_multi_turn_mask_keeps_each_answer_and_eos(demo_tokenizer):
    system, pairs = CHATS[0]
    s = conversation.tokenize("vicuna", messages()[0]["messages"], demo_tokenizer, SEQ)
    kept = [t for t in s.labels if t != IGN]
    assert kept.count(2) == 2                              # one eos per answer
    assert demo_tokenizer.decode(kept) == "5 8"            # both answers, nothing of the prompts
    assert demo_tokenizer.decode(s.input_ids[1:s.num_tokens]).startswith(
        "You are terse. USER: Add 2 and 3.")               # the system turn replaces vicuna's


def test_glm2_multi_turn_hand_computed(demo_tokenizer):
    """ChatGLM2's build_prompt rounds; each segment encoded on its own (AdvertiseGen's way)."""
    tok = demo_tokenizer
    turns = messages([(None, [("你好", "您好！"), ("几点了？", "三点。")])])[0]["messages"]
    r1, r2 = "[Round 1]\n\n问：你好\n\n答：", "\n\n[Round 2]\n\n问：几点了？\n\n答："
    a1, a2 = tok.encode("您好！"), tok.encode("三点。")
    ids = tok.prefix_ids + tok.encode(r1) + a1 + tok.encode(r2) + a2 + [2]
    labels = ([IGN] * len(tok.prefix_ids + tok.encode(r1)) + a1 + [IGN] * len(tok.encode(r2))
              + a2 + [2])
    s = conversation.tokenize("glm2", turns, tok, 200)
    pad = 201 - len(ids)
    assert s.input_ids == ids + [0] * pad and s.labels == labels + [IGN] * pad
    with pytest.raises(TemplateError, match="no system turn"):
        conversation.tokenize("glm2", messages()[0]["messages"], tok, 200)


def test_none_template_hand_computed(demo_tokenizer):
    tok = demo_tokenizer
    turns = messages([(None, [("one two", " three"), ("four", " five")])])[0]["messages"]
    parts = [tok.encode(t) for t in ("one two", " three", "four", " five")]
    ids = [1] + parts[0] + parts[1] + [2] + parts[2] + parts[3] + [2]
    labels = [IGN] * (1 + len(parts[0])) + parts[1] + [2] + [IGN] * len(parts[2]) + parts[3] + [2]
    s = conversation.tokenize("none", turns, tok, 100)
    assert s.input_ids[:len(ids)] == ids and s.labels[:len(labels)] == labels


def test_predict_prompt_is_the_training_sample_up_to_the_answer(demo_tokenizer):
    """The one template module: what predict renders for a question is exactly where a training
    sample's answer starts, for single and multi-turn (the chat mode) conversations."""
    from petrun.infer.chat import encode_prompt

    tok = demo_tokenizer
    turns = messages()[0]["messages"]
    sample = conversation.tokenize("vicuna", turns, tok, SEQ)
    first = [t for t in turns if t["role"] != "system"][:1]
    single = conversation.tokenize("vicuna", first + [turns[2]], tok, SEQ)
    prompt = encode_prompt("vicuna", "Add 2 and 3.", tok)
    assert single.input_ids[:len(prompt)] == prompt and single.labels[len(prompt)] != IGN
    history, _ = conversation.encode("vicuna", turns[:-1], tok, add_generation_prompt=True)
    assert sample.input_ids[:len(history)] == history
    assert sample.labels[len(history) - 1] == IGN and sample.labels[len(history)] != IGN
    assert to_text(render("vicuna", turns[:-1], add_generation_prompt=True)).endswith(
        "</s>USER: And 4 and 4? ASSISTANT:")


def test_sharegpt_roles_mapped_or_refused_by_name(tmp_path, tok_cfg):
    records = [
        sharegpt()[1],
        {"conversations": [{"from": "human", "value": "weather?"},
                           {"from": "gpt", "value": "calling"},
                           {"from": "tool", "value": "{\"t\": 3}"},
                           {"from": "gpt", "value": "3 degrees"}]},
        {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"conversations": [{"from": "human", "value": "q"}]},
        {"conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"},
                           {"from": "gpt", "value": "yo"}]},   # leading gpt turn dropped
        {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]},
        messages()[1],
    ]
    report, rows = run_prepare(tmp_path, "sharegpt", write("jsonl", records, tmp_path), tok_cfg)
    reasons = {b.line: b.reason for b in report.bad}
    assert sorted(reasons) == [2, 3, 4, 7]
    assert "'tool' turn" in reasons[2] and "no tool role" in reasons[2]
    assert "'narrator'" in reasons[3]
    assert "ends with a user turn" in reasons[4]
    assert "missing field 'conversations'" in reasons[7] and "messages record" in reasons[7]
    assert report.written == 3 and len(rows) == 3


def test_messages_roles_refused_by_name(tmp_path, tok_cfg):
    records = [
        {"messages": [{"role": "developer", "content": "be kind"},
                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "late"},
                      {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "two "},
                                                   {"type": "text", "text": "parts"}]},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
    ]
    report, rows = run_prepare(tmp_path, "messages", write("json", records, tmp_path), tok_cfg)
    reasons = {b.index: b.reason for b in report.bad}
    assert sorted(reasons) == [1, 2, 3, 5, 6]
    assert "role 'developer'" in reasons[1] and "'system'" in reasons[1]
    assert "role 'tool'" in reasons[2]
    assert "a system turn may only come first" in reasons[3]
    assert "'image_url' part" in reasons[5] and "is empty" in reasons[6]
    assert len(rows) == 1 and report.bad_preview().startswith("record 1 (line 2): message 0")


def test_bad_rows_of_a_table_are_listed_by_row(tmp_path, tok_cfg):
    records = messages() + [{"messages": [{"role": "user", "content": "only a question"}]}]
    report, rows = run_prepare(tmp_path, "messages", write("parquet", records, tmp_path), tok_cfg)
    assert [(b.where, b.reason) for b in report.bad] == [
        ("row 3", "the conversation ends with a user turn: no answer to learn")]
    assert len(rows) == 2


def test_column_mapping(tmp_path, demo_tokenizer, tok_cfg):
    records = messages(key="chats", role="speaker", content="text")
    src = write("jsonl", records, tmp_path)
    report, rows = run_prepare(tmp_path, "messages", src, tok_cfg,
                               columns={"messages": "chats", "role": "speaker", "content": "text"})
    assert rows == [tuple(map(list, vicuna_hand(demo_tokenizer, s, p))) for s, p in CHATS]
    unmapped, _ = prep.read_items(prep.Spec("messages", tok_cfg, SEQ), src)
    assert formats.to_turns("messages", unmapped[0].obj)[1] == "missing field 'messages'"
    with pytest.raises(UserError, match="unknown column name 'mesages'.*'messages'") as e:
        run_prepare(tmp_path, "messages", src, tok_cfg, columns={"mesages": "chats"})
    assert e.value.key == "train_dataset.columns.mesages"


def test_config_schema_refuses_a_misspelt_column_name(tmp_path):
    from tests.conftest import ROOT
    from petrun.config import load_config

    config = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
    cfg = load_config(config, ["train_dataset.columns.messages=chats", "train_dataset.split=test"])
    assert cfg.get("train_dataset.columns") == {"messages": "chats"}
    with pytest.raises(UserError) as e:
        load_config(config, ["train_dataset.columns.mesages=chats"])
    assert "train_dataset.columns.mesages" in str(e.value) and "messages" in str(e.value)


def test_datasetdict_folder_reads_one_split(tmp_path, caplog, tok_cfg):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dd"
    datasets.DatasetDict(train=datasets.Dataset.from_list(messages()),
                         test=datasets.Dataset.from_list(messages()[1:])).save_to_disk(str(folder))
    with caplog.at_level("INFO", logger="petrun"):
        train, _ = read_records(str(folder))
    assert [r.obj for r in train] == messages() and "reading split 'train'" in caplog.text
    test, _ = read_records(str(folder), split="test")
    assert [r.obj for r in test] == messages()[1:]
    evaluated, _ = read_records(str(folder), key="eval_dataset.data_loader.dataset_dir")
    assert len(evaluated) == 1                                   # evaluation reads "test"
    with pytest.raises(UserError, match="no split 'validation'; it has train, test") as e:
        read_records(str(folder), split="validation", key="train_dataset.data_loader.dataset_dir")
    assert e.value.key == "train_dataset.split"
    # prepare reads the split asked for; an Arrow file of the folder reads on its own too
    report, rows = run_prepare(tmp_path, "messages", str(folder), tok_cfg, split="test")
    assert report.written == 1 and report.template == "vicuna"
    arrow = sorted((folder / "train").glob("*.arrow"))
    assert len(arrow) == 1 and [r.obj for r in read_records(str(arrow[0]))[0]] == messages()


def test_raw_messages_folder_as_dataset_dir(tmp_path, demo_dir, demo_tokenizer):
    """finetune's dataset_dir may be a save_to_disk folder of raw messages (no more 'point
    dataset_dir at dataset_dict.json')."""
    datasets = pytest.importorskip("datasets")
    from petrun.data import loader
    from petrun.data.ondemand import RawText

    folder = tmp_path / "dd"
    datasets.DatasetDict(train=datasets.Dataset.from_list(messages())).save_to_disk(str(folder))
    raw = RawText({"type": "LlamaTokenizer",
                   "vocab_file": os.path.join(demo_dir, "tokenizer.model")}, str(tmp_path / "c"))
    info = loader.check_dataset(str(folder), seq_length=SEQ, batch_size=2, raw=raw)
    assert info["num_samples"] == 2 and info["raw"]["format"] == "messages"
    src = loader.open_dataset(str(folder), seq_length=SEQ, batch_size=2, raw=raw)
    assert src._arrays["labels"].tolist() == [vicuna_hand(demo_tokenizer, s, p)[1]
                                             for s, p in CHATS]
    with pytest.raises(UserError) as e:
        loader.check_dataset(str(folder), seq_length=SEQ)    # no tokenizer: name the command
    assert "petrun data prepare messages" in e.value.fix

    # a folder whose column is spelled "dialog", mapped by train_dataset.columns
    renamed = tmp_path / "renamed"
    datasets.Dataset.from_list(messages(key="dialog")).save_to_disk(str(renamed))
    mapped = RawText(raw.tokenizer, raw.cache_dir, columns={"messages": "dialog"})
    src = loader.open_dataset(str(renamed), seq_length=SEQ, batch_size=2, raw=mapped)
    assert src._arrays["labels"].tolist() == [vicuna_hand(demo_tokenizer, s, p)[1]
                                             for s, p in CHATS]
    # the template is part of the cache key: another template, another entry
    plain = RawText(raw.tokenizer, raw.cache_dir, chat_template="none")
    loader.check_dataset(str(folder), seq_length=SEQ, batch_size=2, raw=plain)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 3


def test_prepare_messages_on_a_full_disk_leaves_nothing(tiny_tmpfs, tmp_path, tok_cfg):
    """~3 MB of samples onto a 1 MiB tmpfs: a UserError naming --output, and no partial file."""
    src = write("jsonl", messages() * 100, tmp_path)
    out = tiny_tmpfs / "chats.jsonl"
    with pytest.raises(UserError, match="no space left|could not write") as e:
        prep.prepare("messages", src, str(out), tokenizer=tok_cfg, seq_length=2048)
    assert e.value.key == "--output"
    assert list(tiny_tmpfs.iterdir()) == []


def test_glm2_family_messages_are_shifted_glm2_rounds(tmp_path, demo_tokenizer, tok_cfg):
    """A GLM2 config (labels pre-shifted, family template glm2): samples of seq_length tokens,
    labels one ahead of the ids, ChatGLM2's rounds."""
    tok = demo_tokenizer
    chats = [(None, [("Add 2 and 3.", "5")])]
    src = write("jsonl", messages(chats), tmp_path)
    report, rows = run_prepare(tmp_path, "messages", src, tok_cfg, shift_labels=True,
                               family_template="glm2")
    prompt = tok.prefix_ids + tok.encode("[Round 1]\n\n问：Add 2 and 3.\n\n答：")
    ids = prompt + tok.encode("5") + [2]
    labels = [IGN] * len(prompt) + tok.encode("5") + [2]
    pad = SEQ + 1 - len(ids)
    ids, labels = ids + [0] * pad, labels + [IGN] * pad
    assert report.template == "glm2"
    assert rows == [(ids[:-1], labels[1:])]


def test_tokenized_datasetdict_folder_honours_the_split(tmp_path, tok_cfg):
    datasets = pytest.importorskip("datasets")
    from petrun.data import loader
    from petrun.data.ondemand import RawText

    def rows(n, start):
        return [{"input_ids": [start + i] * 9, "labels": [start + i] * 9} for i in range(n)]

    folder = tmp_path / "tok"
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows(4, 10)),
                         test=datasets.Dataset.from_list(rows(2, 50))).save_to_disk(str(folder))
    train = loader.open_dataset(str(folder), seq_length=8, batch_size=2, raw=RawText(tok_cfg))
    test = loader.open_dataset(str(folder), seq_length=8, batch_size=2,
                               raw=RawText(tok_cfg, split="test"))
    assert train._arrays["input_ids"][:, 0].tolist() == [10, 11, 12, 13]
    assert test._arrays["input_ids"][:, 0].tolist() == [50, 51]
    assert loader.inspect_dataset(str(folder))["num_samples"] == 4


def test_a_system_column_replaces_the_default_system_prompt(tmp_path, demo_tokenizer, tok_cfg):
    """alpaca and ShareGPT files often carry the system prompt in its own column."""
    rec = {"instruction": "What is 12 plus 30?", "output": "42", "system": "Be brief."}
    sg = {"system": "Be brief.", "conversations": sharegpt(CHATS[1:])[0]["conversations"]}
    _, alpaca_rows = run_prepare(tmp_path, "alpaca", write("jsonl", [rec], tmp_path), tok_cfg)
    _, sg_rows = run_prepare(tmp_path, "sharegpt", write("json", [sg], tmp_path), tok_cfg)
    want = vicuna_hand(demo_tokenizer, "Be brief.", [(NO_INPUT.format(rec["instruction"]), "42")])
    assert alpaca_rows == [tuple(map(list, want))]
    assert sg_rows == [tuple(map(list, vicuna_hand(demo_tokenizer, "Be brief.", CHATS[1][1])))]
