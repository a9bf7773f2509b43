"""Token ids outside the model's vocabulary are refused with the file, the column and a fix, before
the first step (on CPU the embedding lookup would fail after the compile; on Ascend it reads
garbage silently)."""
import json

import numpy as np
import pytest

from petrun.data import loader
from petrun.data import mindrecord as mr
from petrun.errors import UserError
from tests.conftest import ROOT, run_cli

SEQ, VOCAB = 8, 100
KEY = "train_dataset.data_loader.dataset_dir"


def _rows(n=4, bad_row=None, bad_id=None, bad_col="input_ids"):
    rows = []
    for i in range(n):
        ids = [1 + (i + j) % 50 for j in range(SEQ + 1)]
        ids[-1] = VOCAB - 1                  # the largest id that fits
        labels = [-100] * 3 + ids[3:]
        row = {"input_ids": ids, "labels": labels}
        if i == bad_row:
            row[bad_col][5] = bad_id
        rows.append(row)
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ids_inside_the_vocabulary_pass_and_ignore_marks_are_not_ids(tmp_path):
    src = _jsonl(tmp_path / "ok.jsonl", _rows())
    data = loader.open_dataset(src, seq_length=SEQ, batch_size=2, vocab_size=VOCAB)
    assert data.num_samples == 4
    # one id less and the largest id no longer fits
    with pytest.raises(UserError, match=f"token id {VOCAB - 1}, outside"):
        loader.open_dataset(src, seq_length=SEQ, batch_size=2, vocab_size=VOCAB - 1)


@pytest.mark.parametrize("column", ["input_ids", "labels"])
def test_an_out_of_vocabulary_id_in_json_lines_is_a_user_error(tmp_path, column):
    src = _jsonl(tmp_path / "bad.jsonl", _rows(bad_row=2, bad_id=VOCAB + 7, bad_col=column))
    with pytest.raises(UserError) as e:
        loader.open_dataset(src, seq_length=SEQ, batch_size=2, vocab_size=VOCAB, key=KEY)
    err = e.value
    assert err.file == src and err.key == KEY
    assert f"{column} holds token id {VOCAB + 7}, outside the model's vocabulary of {VOCAB}" \
        in err.message
    assert "model's tokenizer" in err.fix and "vocab_size" in err.fix
    # pre-flight (first record only) lets a later bad record through; open_dataset catches it
    assert loader.check_dataset(src, seq_length=SEQ, batch_size=2, vocab_size=VOCAB)


def test_mindrecord_batches_are_checked_before_their_step(tmp_path):
    path = str(tmp_path / "d.mindrecord")
    rows = [{k: np.asarray(v, np.int32) for k, v in r.items()}
            for r in _rows(n=4, bad_row=3, bad_id=VOCAB)]
    mr.write_samples(path, rows)
    data = loader.open_dataset(path, seq_length=SEQ, batch_size=2, vocab_size=VOCAB, key=KEY)
    batches = list(data.epoch(1).create_tuple_iterator(num_epochs=1))
    data.check_batch(batches[0], "a batch of step 1")       # rows 0-1: fine
    with pytest.raises(UserError) as e:
        data.check_batch(batches[1], "a batch of step 2")   # row 3 holds id VOCAB
    assert f"input_ids (a batch of step 2) holds token id {VOCAB}" in e.value.message
    assert e.value.file == path
    # Packing reads everything up front, so it refuses the data at once.
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        loader.open_dataset(path, seq_length=SEQ, batch_size=2, vocab_size=VOCAB, packing=True)


def test_finetune_refuses_out_of_vocabulary_data_in_preflight(tmp_path):
    rows = [json.loads(x) for x in
            (ROOT / "data/demo/alpaca_demo_seq256.jsonl").read_text().splitlines()[:16]]
    rows[0]["input_ids"][10] = 600          # the tiny Llama2 has 512 ids
    src = _jsonl(tmp_path / "big_ids.jsonl", rows)
    r = run_cli("finetune", "--config", ROOT / "configs/llama2/lora_llama2_tiny.yaml",
                "--train_dataset_dir", src, "--output_dir", tmp_path / "out")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "pre-flight found 1 problem" in out
    assert "input_ids holds token id 600, outside the model's vocabulary of 512" in out
    assert not (tmp_path / "out").exists()
