"""petrun.data.packing as data: rows, labels at boundaries, positions, segments, the mask."""
import numpy as np

from petrun.data.packing import IGNORE, block_causal_mask, bucket_order, first_fit_decreasing, pack, real_length

PAD = 0


def padded(samples, row_len):
    ids = np.full((len(samples), row_len), PAD, np.int32)
    lab = np.full((len(samples), row_len), IGNORE, np.int32)
    for i, (x, y) in enumerate(samples):
        ids[i, :len(x)] = x
        lab[i, :len(y)] = y
    return ids, lab


def test_real_length_stops_at_trailing_padding_only():
    ids = np.array([5, 0, 7, 0, 0])             # a pad-valued token inside the sample counts
    lab = np.array([IGNORE, 0, 7, IGNORE, IGNORE])
    assert real_length(ids, lab, PAD) == 3
    assert real_length(np.zeros(4), np.full(4, IGNORE), PAD) == 0


def test_first_fit_decreasing_fills_rows_and_keeps_order_inside():
    bins = first_fit_decreasing([5, 3, 4, 2, 6], 8)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 4, 2, 6][i] for i in b) <= 8 for b in bins)
    assert bins == [[0, 1], [2], [3, 4]]   # 6 then 5 open rows; 4 opens a third; 3, 2 fill
    assert all(b == sorted(b) for b in bins)


def test_pack_by_hand():
    a = ([1, 11, 12, 13], [IGNORE, IGNORE, 12, 13])        # prompt 1 11, answer 12 13
    b = ([1, 21, 22], [1, 21, 22])                          # pretraining-style: all targets
    c = ([1, 31, 32, 33, 34, 35], [IGNORE, IGNORE, IGNORE, 33, 34, 35])
    ids, lab = padded([a, b, c], 8)
    p = pack(ids, lab, pad_id=PAD, shift_in_model=True)
    assert p.rows == 2 and p.samples == 3
    # c (6) alone can take no other sample; a (4) + b (3) share a row, in source order
    np.testing.assert_array_equal(p.input_ids[0], [1, 11, 12, 13, 1, 21, 22, PAD])
    # b's first label is masked: a's last token must not predict across the boundary
    np.testing.assert_array_equal(p.labels[0], [IGNORE, IGNORE, 12, 13, IGNORE, 21, 22, IGNORE])
    np.testing.assert_array_equal(p.position_ids[0], [0, 1, 2, 3, 0, 1, 2, 0])
    np.testing.assert_array_equal(p.segment_ids[0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(p.input_ids[1], [1, 31, 32, 33, 34, 35, PAD, PAD])
    assert p.useful_before == 13 / 24 and p.useful_after == 13 / 16
    # pre-shifted labels (GLM2) keep every label as given
    q = pack(ids, lab, pad_id=PAD, shift_in_model=False)
    assert q.labels[0, 4] == 1


def test_block_causal_mask():
    m = block_causal_mask(np.array([[1, 1, 2, 2, 0]]))[0]
    want = np.array([[1, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0],
                     [0, 0, 1, 0, 0],
                     [0, 0, 1, 1, 0],
                     [0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(m, want)


def test_bucket_order_is_a_permutation_of_similar_length_batches():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(10, 500, 1000))
    order = bucket_order(lengths, 8, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(1000))
    spread = [np.ptp([lengths[i] for i in order[k:k + 8]]) for k in range(0, 1000, 8)]
    assert np.median(spread) < 0.1 * np.ptp(lengths)            # batches are length-homogeneous
    again = bucket_order(lengths, 8, np.random.default_rng(1))
    assert np.array_equal(order, again)
