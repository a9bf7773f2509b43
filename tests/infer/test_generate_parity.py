"""Greedy generation and eval loss against HF transformers on the same tiny random weights
(converted with petrun.ckpt.hf), for each family. Needs the parity extra."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from petrun.infer.generate import GenerationConfig, generate  # noqa: E402
from petrun.infer.sampling import SamplingConfig  # noqa: E402
from tests.infer import infer_helpers as ih  # noqa: E402

pytestmark = pytest.mark.parity
NEW = 32


@pytest.fixture(scope="module", params=ih.FAMILIES)
def pair(request, tmp_path_factory):
    hf, net = ih.hf_pair(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, hf, net


def test_greedy_matches_hf_generate_with_and_without_cache(pair):
    """A left-padded batch (one row unpadded): HF generate(do_sample=False) with its own cache
    and position_ids from the attention mask, against petrun with the compiled fixed-size KV
    cache, the PyNative growing one, and no cache."""
    family, hf, net = pair
    rows = ih.prompts((9, 5), seed=3)
    want = ih.hf_greedy(hf, rows, NEW)
    assert max(len(set(t)) for t in want) >= 8, "degenerate reference output tests nothing"
    for extra in ({}, {"jit": False}, {"use_cache": False}):
        got = generate(net, rows, GenerationConfig(max_new_tokens=NEW, **extra))
        assert got.tokens == want, (family, extra)


def test_repetition_penalty_matches_hf(pair):
    family, hf, net = pair
    if family != "llama2":
        pytest.skip("the penalty is family-independent host code; one family checks it")
    row = ih.prompts((6,), seed=12)[0]
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row),
                          dtype=torch.long), do_sample=False, max_new_tokens=NEW,
                          min_new_tokens=NEW, eos_token_id=None, pad_token_id=0,
                          repetition_penalty=1.3)
    want = out[0, len(row):].tolist()
    got = generate(net, [row], GenerationConfig(
        max_new_tokens=NEW, sampling=SamplingConfig(repetition_penalty=1.3))).tokens[0]
    assert got == want
    plain = generate(net, [row], GenerationConfig(max_new_tokens=NEW)).tokens[0]
    assert plain != want, "the penalty changed nothing: the check is vacuous"


def _write_eval_set(tmp, family, ids, labels):
    """Rows as the family's training data holds them; GLM2's come shifted (§7.2)."""
    path = tmp / f"eval_{family}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for x, y in zip(ids.tolist(), labels.tolist()):
            if family == "glm2":
                x, y = x[:-1], y[1:]
            f.write(json.dumps({"input_ids": x, "labels": y}) + "\n")
    return path


def test_eval_loss_matches_hf(pair, tmp_path):
    """Evaluator over a 3-row set in batches of 2 (so the batches hold different numbers of
    target tokens) equals HF's loss with the 3 rows as one batch."""
    from petrun.config import load_config
    from petrun.infer.eval import Evaluator

    family, hf, net = pair
    seq = 24
    rng = np.random.default_rng(21)
    ids = rng.integers(3, ih.VOCAB, (3, seq + 1))
    labels = ids.copy()
    labels[:, :5] = -100
    labels[0, -9:] = -100
    with torch.no_grad():
        want = float(hf(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss)
    data = _write_eval_set(tmp_path, family, ids, labels)
    section = ih.model_section(family, seq_length=seq)
    if family == "gpt2":
        section["model_config"]["max_position_embeddings"] = ih.POSITIONS
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(json.dumps({"model": section, "eval_dataset": {
        "data_loader": {"dataset_dir": str(data)}, "batch_size": 2}}), encoding="utf-8")
    result = Evaluator.from_config(load_config(str(cfg_path))).run(net)
    assert result.batches == 2 and result.samples == 3
    assert result.tokens == int((labels[:, 1:] != -100).sum())
    assert abs(result.loss - want) <= 1e-4, (result.loss, want)
    assert abs(result.perplexity - np.exp(want)) <= 1e-3 * np.exp(want)
