"""Golden tests for the AdvertiseGen (ChatGLM2) and wikitext formats, against the layouts written
out in reference/mindformers.md §7.1–7.3."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from petrun.data import advertisegen, wikitext
from petrun.data import prepare as prep
from petrun.data.mindrecord import read_mindrecord, read_schema
from petrun.data.tokenizer import load_tokenizer
from petrun.errors import UserError

IGN = -100
AD = {"content": "类型#裙*颜色#红色*图案#条纹", "summary": "This red striped dress is easy to wear."}


@pytest.fixture
def glm_cfg(demo_dir):
    return {"type": "ChatGLM2Tokenizer", "vocab_file": os.path.join(demo_dir, "tokenizer.model")}


# --------------------------------------------------------------------------- AdvertiseGen

def test_advertisegen_golden(glm_cfg):
    tok = load_tokenizer(glm_cfg)
    src, tgt = 96, 32
    sample = advertisegen.tokenize_record(AD, tok, src, tgt)
    prompt = [513, 515] + tok.encode("[Round 1]\n\n问：" + AD["content"] + "\n\n答：")
    answer = tok.encode(AD["summary"])
    assert len(prompt) <= src and len(answer) <= tgt   # nothing cut here
    total = src + tgt + 1
    want_ids = prompt + answer + [2] + [0] * (total - len(prompt) - len(answer) - 1)
    want_labels = [IGN] * (len(prompt) - 1) + answer + [2] + [IGN] * (total - len(prompt) - len(answer))
    assert sample.input_ids == want_ids and sample.labels == want_labels
    assert len(sample.input_ids) == len(sample.labels) == total
    assert not sample.truncated and not sample.fully_masked
    # Already shifted: label i is the token at i + 1 wherever a label is kept.
    kept = [i for i, t in enumerate(sample.labels) if t != IGN]
    assert kept and all(sample.labels[i] == sample.input_ids[i + 1] for i in kept[:-1])
    assert sample.labels[kept[-1]] == 2 and sample.input_ids[kept[-1] + 1] == 2


def test_advertisegen_truncation_keeps_the_prefix(glm_cfg):
    tok = load_tokenizer(glm_cfg)
    sample = advertisegen.tokenize_record(AD, tok, 10, 4)
    prompt = tok.encode("[Round 1]\n\n问：" + AD["content"] + "\n\n答：")
    answer = tok.encode(AD["summary"])
    assert sample.truncated
    assert sample.input_ids == [513, 515] + prompt[:8] + answer[:4] + [2]
    assert sample.labels == [IGN] * 9 + answer[:4] + [2, IGN]


def test_advertisegen_prepare_counts_bad_lines(tmp_path, glm_cfg):
    src = tmp_path / "train.json"   # AdvertiseGen ships JSON lines under a .json name
    src.write_text("\n".join([
        json.dumps(AD, ensure_ascii=False),
        json.dumps({"content": "类型#裤"}, ensure_ascii=False),           # 2 missing summary
        "{oops",                                                         # 3 invalid JSON
        json.dumps({"content": "  ", "summary": "x"}),                   # 4 blank
        json.dumps({"content": ["a"], "summary": "x"}),                  # 5 wrong type
        json.dumps({"content": "类型#上衣", "summary": "A warm coat."}, ensure_ascii=False),
    ]) + "\n", encoding="utf-8")
    out = str(tmp_path / "adgen.mindrecord")
    report = prep.prepare("advertisegen", str(src), out, tokenizer=glm_cfg, seq_length=121,
                          max_source_length=96)   # target derived: 121 - 96 - 1
    assert report.sample_length == 121 and report.written == 2
    assert [b.line for b in report.bad] == [2, 3, 4, 5]
    assert read_schema(out) == {"input_ids": {"type": "int32", "shape": [-1]},
                                "labels": {"type": "int32", "shape": [-1]}}
    rows = read_mindrecord(out)
    tok = load_tokenizer(glm_cfg)
    assert rows[0]["labels"].tolist() == advertisegen.tokenize_record(AD, tok, 96, 24).labels


def test_advertisegen_length_rules(tmp_path, glm_cfg):
    src = tmp_path / "t.json"
    src.write_text(json.dumps(AD) + "\n")
    out = str(tmp_path / "o.mindrecord")
    with pytest.raises(UserError) as e:
        prep.prepare("advertisegen", str(src), out, tokenizer=glm_cfg, seq_length=None)
    assert "max-source-length" in e.value.fix
    with pytest.raises(UserError) as e:   # MindFormers' check_rules: seq = source + target + 1
        prep.prepare("advertisegen", str(src), out, tokenizer=glm_cfg, seq_length=200,
                     max_source_length=96, max_target_length=24)
    assert e.value.key == "model.model_config.seq_length"
    with pytest.raises(UserError):
        prep.prepare("advertisegen", str(src), out, tokenizer=glm_cfg, seq_length=None,
                     max_source_length=2, max_target_length=24)   # only [gMASK] sop would fit
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- wikitext

WIKI = """ = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a tactical role @-@ playing video game . 
 The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II . 
 
 = = Gameplay = = 
 
 As with previous Valkyira Chronicles games , the player 's units fight in 1 @,@ 000 battles . 
 
 = = Reception = = 
 
 It sold 102 @.@ 5 thousand copies . 
"""
PARAGRAPHS = [
    "Senjō no Valkyria 3: Unrecorded Chronicles (Japanese: 戦場のヴァルキュリア3) is a tactical "
    "role-playing video game.\nThe game began development in 2010, carrying over a large portion "
    "of the work done on Valkyria Chronicles II.",
    "As with previous Valkyira Chronicles games, the player's units fight in 1,000 battles.",
    "It sold 102.5 thousand copies.\n",
]


def test_wikitext_cleaning():
    assert wikitext.llama_paragraphs(WIKI) == PARAGRAPHS
    # GPT2's script: section lines joined by spaces, headings dropped, " ." glued too.
    assert wikitext.gpt2_sections(WIKI) == [p.replace("\n", " ").strip() for p in PARAGRAPHS]
    assert wikitext.clean_wikitext("a , b ; c @-@ d ( e ) the dog 's N = = h = =") == \
        "a, b; c-d (e) the dog's 1 == h =="


def test_wikitext_llama_blocks(tmp_path, demo_dir, demo_tokenizer):
    src = tmp_path / "wiki.train.tokens"
    src.write_text(WIKI, encoding="utf-8")
    out = str(tmp_path / "wiki.mindrecord")
    cfg = {"vocab_file": os.path.join(demo_dir, "tokenizer.model")}
    report = prep.prepare("wikitext", str(src), out, tokenizer=cfg, seq_length=31)
    stream = [t for p in PARAGRAPHS for t in [1] + demo_tokenizer.encode(p) + [2]]
    n = len(stream) // 32
    assert report.written == n > 3 and report.dropped_tokens == len(stream) - 32 * n
    assert report.tokens == len(stream) and report.records == 3
    assert read_schema(out) == {"input_ids": {"type": "int32", "shape": [-1]}}
    rows = read_mindrecord(out)
    assert np.concatenate([r["input_ids"] for r in rows]).tolist() == stream[:32 * n]
    assert all(r["input_ids"].size == 32 for r in rows)


def test_wikitext_gpt2_blocks(tmp_path, bpe_files):
    from tokenizers import Tokenizer as HF

    src = tmp_path / "wiki.train.tokens"
    src.write_text(WIKI, encoding="utf-8")
    out = str(tmp_path / "wiki.mindrecord")
    cfg = {"type": "GPT2Tokenizer", "vocab_file": bpe_files["vocab"]}
    report = prep.prepare("wikitext", str(src), out, tokenizer=cfg, seq_length=15)
    # The whole text encoded at once, as MindFormers' GPT2 script does.
    text = "\n".join(p.replace("\n", " ").strip() for p in PARAGRAPHS)
    stream = HF.from_file(bpe_files["tokenizer_json"]).encode(text).ids
    n = len(stream) // 16
    assert report.written == n and report.dropped_tokens == len(stream) - 16 * n
    assert read_schema(out) == {"input_ids": {"type": "int32", "shape": [-1]},
                                "attention_mask": {"type": "int32", "shape": [-1]}}
    rows = read_mindrecord(out)
    assert np.concatenate([r["input_ids"] for r in rows]).tolist() == stream[:16 * n]
    assert all((r["attention_mask"] == 1).all() and r["attention_mask"].size == 16 for r in rows)


def test_wikitext_too_short(tmp_path, demo_dir):
    src = tmp_path / "w.txt"
    src.write_text(" = T = \n \n Short . \n")
    with pytest.raises(UserError) as e:
        prep.prepare("wikitext", str(src), str(tmp_path / "w.mindrecord"),
                     tokenizer={"vocab_file": os.path.join(demo_dir, "tokenizer.model")},
                     seq_length=512)
    assert "less than one block" in e.value.message
