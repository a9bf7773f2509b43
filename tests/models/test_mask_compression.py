"""use_attn_mask_compression (MindFormers r1.3 Llama) on the fused path, checked on CPU with the
reference FlashAttentionScore standing in (tests/models/kernel_references.py: sparse_mode 2 is
leftUpCausal, query i keeps key j <= i, with the optimized (2048, 2048) mask).

Oracles: MindFormers v1.3.0 source for what is passed (llama_transformer.py LLamaAttention:
sparse_mode 2 when use_attn_mask_compression, pre_tokens 2147483647, next_tokens 0;
transformer.py LowerTriangularMaskWithDynamic: np.triu(np.ones((2048, 2048)), k=1) as uint8), and
petrun's composite CPU model for what is computed: training loss and gradients equal it ≤1e-5 on
right-padded rows; at pad positions the compressed mask (which hides no pad key, as in
MindFormers) gives other logits, which shows the compressed kernel really ran.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.config import load_config
from petrun.errors import UserError
from petrun.models import kernels
from petrun.models.kernel_choice import select_kernels
from petrun.models.kernels import FlashAttentionCore
from petrun.models.llama import LlamaForCausalLM
from petrun.preflight import run_setting_errors
from tests.models.kernel_references import STAND_INS, RefFlashAttentionScore
from tests.models.model_helpers import randomize, tiny_config

SEQ, PAD = 16, 0


def _pair():
    cfg = tiny_config(seq_length=SEQ, pad_token_id=PAD, use_flash_attention=True,
                      use_attn_mask_compression=True)
    plain = LlamaForCausalLM(cfg, device_target="CPU")
    RefFlashAttentionScore.calls.clear()
    with kernels.stand_ins(**STAND_INS):
        fused = LlamaForCausalLM(cfg, device_target="Ascend")
    for net in (plain, fused):
        randomize(net, seed=5)
    return plain, fused


def _ids():
    rng = np.random.default_rng(2)
    x = rng.integers(3, 90, (2, SEQ + 1)).astype(np.int32)
    x[1, -5:] = PAD                                   # right padding, as training rows are
    return x


def test_switch_selects_sparse_mode_2_with_mindformers_arguments():
    plain, fused = _pair()
    cores = [c for _, c in fused.cells_and_names() if isinstance(c, FlashAttentionCore)]
    assert cores and all(c.mask_compression for c in cores)
    np.testing.assert_array_equal(cores[0].compressed_mask.asnumpy(),
                                  np.triu(np.ones((2048, 2048), np.uint8), k=1))
    assert cores[0].compressed_mask.dtype == ms.uint8
    sparse2 = [c for c in RefFlashAttentionScore.calls if c["sparse_mode"] == 2]
    assert len(sparse2) == len(cores)
    assert sparse2[0]["pre_tokens"] == 2147483647 and sparse2[0]["next_tokens"] == 0
    # only Llama has the switch, and only with flash attention on Ascend
    cfg = tiny_config(use_flash_attention=False, use_attn_mask_compression=True)
    assert not select_kernels("llama2", cfg, "Ascend").fa_mask_compression
    cfg = tiny_config(use_flash_attention=True, use_attn_mask_compression=True)
    assert not select_kernels("llama2", cfg, "CPU").fa_mask_compression


def test_training_loss_and_gradients_equal_composite():
    plain, fused = _pair()
    x = _ids()
    labels = Tensor(np.where(x == PAD, -100, x).astype(np.int32))
    results = []
    for net in (plain, fused):
        net.set_train(True)                            # the compressed path is for training
        weights = net.trainable_params()
        results.append(ms.value_and_grad(net, None, weights)(Tensor(x), labels))
    np.testing.assert_allclose(results[0][0].asnumpy(), results[1][0].asnumpy(), rtol=1e-5,
                               atol=1e-5)
    assert len(results[0][1]) == len(results[1][1]) > 10
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


def test_compressed_mask_ran_and_hides_no_pad_key():
    plain, fused = _pair()
    x = Tensor(_ids()[:, :SEQ])
    for net in (plain, fused):
        net.set_train(True)
    a, b = plain(x).asnumpy(), fused(x).asnumpy()
    real = _ids()[:, :SEQ] != PAD
    np.testing.assert_allclose(a[real], b[real], rtol=1e-5, atol=1e-5)
    assert np.abs(a[~real] - b[~real]).max() > 1e-3       # pad queries now see pad keys
    # eval keeps the full mask: every position equals the composite model
    for net in (plain, fused):
        net.set_train(False)
    np.testing.assert_allclose(plain(x).asnumpy(), fused(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_packing_with_mask_compression_is_refused():
    cfg = load_config("configs/llama2/lora_llama2_7b.yaml",
                      ["train_dataset.packing=True",
                       "model.model_config.use_attn_mask_compression=True"])
    errors = run_setting_errors(cfg, "finetune")
    assert any(isinstance(e, UserError) and e.key == "model.model_config.use_attn_mask_compression"
               and "packing" in e.message for e in errors)
    cfg = load_config("configs/llama2/lora_llama2_7b.yaml", ["train_dataset.packing=True"])
    assert not any("use_attn_mask_compression" in (e.key or "")
                   for e in run_setting_errors(cfg, "finetune"))


@pytest.mark.parametrize("target", ["CPU"])
def test_cpu_build_ignores_the_switch(target):
    cfg = tiny_config(seq_length=SEQ, use_flash_attention=True, use_attn_mask_compression=True)
    net = LlamaForCausalLM(cfg, device_target=target)
    assert not any(isinstance(c, FlashAttentionCore) for _, c in net.cells_and_names())
