"""The data cursor: each epoch's order is a function of (seed, epoch), and starting an epoch after
k batches yields exactly the batches an uninterrupted epoch yields after its first k, on every
rank, shuffled or not (the single-process half of step-exact resume)."""
import numpy as np
import pytest

from petrun.data import mindrecord as mr
from petrun.data.loader import epoch_order, open_dataset

SEQ = 7
N = 23   # not a multiple of the batch or of the shard count: remainders and wrap-around matter


def _samples(n):
    return [{"input_ids": (np.arange(SEQ + 1) + 1000 + i).astype(np.int32),
             "labels": (np.arange(SEQ + 1) + 1000 + i).astype(np.int32)} for i in range(n)]


@pytest.fixture(params=["jsonl", "mindrecord"])
def data_path(request, tmp_path):
    path = tmp_path / f"train.{request.param}"
    (mr.write_jsonl if request.param == "jsonl" else mr.write_mindrecord)(path, _samples(N))
    return str(path)


def _first_tokens(pipeline) -> list[list[int]]:
    return [[int(t) - 1000 for t in ids[:, 0]]
            for ids, _ in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def test_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(N, 1, seed=3, shuffle=True)
    assert np.array_equal(a, epoch_order(N, 1, seed=3, shuffle=True))
    assert not np.array_equal(a, epoch_order(N, 2, seed=3, shuffle=True))
    assert not np.array_equal(a, epoch_order(N, 1, seed=4, shuffle=True))
    assert sorted(a) == list(range(N))
    assert list(epoch_order(N, 5, seed=3, shuffle=False)) == list(range(N))


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_shards_split_one_permutation_like_mindspore(shards):
    full = epoch_order(N, 2, seed=7, shuffle=True)
    parts = [epoch_order(N, 2, seed=7, shuffle=True, num_shards=shards, shard_id=r) for r in range(shards)]
    per = -(-N // shards)
    assert all(len(p) == per for p in parts)
    interleaved = np.stack(parts, axis=1).reshape(-1)   # sample i goes to shard i % shards
    assert list(interleaved[:N]) == list(full)
    assert list(interleaved[N:]) == list(full[:per * shards - N])   # short shards wrap around


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("shards", [1, 2])
def test_skipping_k_batches_continues_exactly_where_an_epoch_left_off(data_path, shuffle, shards):
    for rank in range(shards):
        source = open_dataset(data_path, seq_length=SEQ, batch_size=3, shuffle=shuffle, seed=11,
                              num_shards=shards, shard_id=rank)
        for epoch in (1, 2):
            full = _first_tokens(source.epoch(epoch))
            assert len(full) == source.batches_per_epoch
            assert [t for b in full for t in b] == list(source.order(epoch)[:len(full) * 3])
            for k in (1, len(full) - 1, len(full)):
                assert _first_tokens(source.epoch(epoch, skip_batches=k)) == full[k:]
        if shuffle:
            assert _first_tokens(source.epoch(1)) != _first_tokens(source.epoch(2))


def test_every_rank_resumes_its_own_shard_and_together_they_cover_the_epoch(data_path):
    sources = [open_dataset(data_path, seq_length=SEQ, batch_size=2, shuffle=True, seed=5,
                            num_shards=2, shard_id=r) for r in (0, 1)]
    consumed, covered = 2, set()
    for s in sources:
        seen = [t for b in _first_tokens(s.epoch(3))[:consumed] for t in b]
        rest = [t for b in _first_tokens(s.epoch(3, skip_batches=consumed)) for t in b]
        assert seen + rest == list(s.order(3)[:s.batches_per_epoch * 2])
        covered |= set(seen + rest)
    assert covered == set(range(N))   # 23 samples over 2 × 12 slots: all seen, one twice
