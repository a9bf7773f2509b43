"""The planner counts what the selected code path holds (issue 20, item 3).

Every expected number below is worked out by hand in the comments, from the tiny Llama2 of
configs/llama2/lora_llama2_tiny.yaml: hidden 64, 2 layers, 4 heads of 16 (q = 64), 2 kv heads
(kv = 32), FFN 192, vocab 512, fp32 unless a test overrides it, LoRA r 8 on wq/wk/wv/wo, runner
batch 8 × seq 256 = 2,048 tokens per micro-batch, 256 keys per query. On Ascend and GPU the
planner's terms are analytic (no CPU calibration factor), so they can be compared exactly.
"""
from pathlib import Path

import pytest

from petrun.config import load_config
from petrun.plan import estimate
from petrun.plan.estimator import stage_activations
from petrun.plan.layout import Layout, kernel_paths, layout_from_config
from petrun.plan.levers import levers

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
TOKENS = 8 * 256
FULL = "~model.model_config.pet_config"
FA_ON = "model.model_config.use_flash_attention=True"
FA_OFF = "model.model_config.use_flash_attention=False"


def cfg(*overrides):
    return load_config(TINY, list(overrides))


def per_token(est) -> dict:
    return {k: v / TOKENS for k, v in est.per_layer.items()}


# ---- one layer's saved-for-backward bytes per token, LoRA, fp32 -----------------------------
#   norm inputs     2 norms × (64 · 4 B input + 4 B statistic)                  =   520
#   fp32 attention core, unsharded (models/attention_core.py; backward recomputes the scores):
#     q/k/v/out     query, kv repeated to 4 heads, and the output, 4 × 64 · 4 B  = 1,024
#     weight-grad   as composite                                                 =   512
#   composite attention (sharded runs: semi-auto parallel keeps MindSpore's own backward):
#     q/k/v         query + kv repeated to 4 heads, 3 × 64 · 4 B                 =   768
#     scores        4 heads × 256 keys × 4 B (fp32 softmax out; fp32 compute:
#                   no cast; fp32 softmax: additive mask, no Select condition)   = 4,096
#     weight-grad   wq/wk/wv read norm1 (64 · 4) + wo reads attention out (64 · 4) = 512
#   flash attention:
#     q/k/v/out     (2 · 64 + 2 · 32) · 4 B                                      =   768
#     scores        4 heads × (8 + 8) fp32 softmax max/sum                       =   256
#     weight-grad   norm1 only (wo's input is FA's output, counted above)        =   256
#     mask          the uint8 (B, 1, S, S) mask FA's backward reads, 256 keys × 1 B =   256
#   ffn             gate, up, silu(gate): 3 × 192 · 4 B                          = 2,304
#   lora            4 adapters × rank 8 × 4 B (the A outputs B's gradient reads) =   128
FAST = {"norm inputs": 520, "attention q/k/v/out": 1024, "ffn": 2304, "weight-grad inputs": 512,
        "lora": 128}
SHARDED = ("use_parallel=True", "parallel.parallel_mode=1")
COMPOSITE = {"norm inputs": 520, "attention q/k/v/out": 768, "attention scores": 4096,
             "ffn": 2304, "weight-grad inputs": 512, "lora": 128}
FLASH = {"norm inputs": 520, "attention q/k/v/out": 768, "attention scores": 256,
         "attention mask": 256, "ffn": 2304, "weight-grad inputs": 256, "lora": 128}


def test_ascend_with_flash_attention_holds_no_scores():
    est = estimate(cfg(FA_ON), device_target="Ascend")
    assert est.layout.flash_attention
    assert per_token(est) == FLASH


def test_fp32_attention_core_holds_no_scores():
    est = estimate(cfg(FA_OFF), device_target="Ascend")
    assert not est.layout.flash_attention and not est.layout.strategies
    assert per_token(est) == FAST


def test_ascend_without_flash_attention_counts_seq_by_seq_scores():
    est = estimate(cfg(FA_OFF, *SHARDED), device_target="Ascend")
    assert not est.layout.flash_attention and est.layout.strategies
    assert per_token(est) == COMPOSITE
    # and the stage holds both layers' scores: 2 × 4,096 B × 2,048 tokens
    assert est.terms["attention scores"] == 2 * 4096 * TOKENS


@pytest.mark.parametrize("target", ["CPU", "GPU"])
def test_no_flash_attention_off_ascend_whatever_the_switch(target):
    """petrun's kernels pick FlashAttentionScore on Ascend only: CPU and GPU run the fp32
    attention core even with use_flash_attention True, which holds q, k, v and the output."""
    est = estimate(cfg(FA_ON), device_target=target)
    assert not est.layout.flash_attention
    # terms are the unscaled analytic bytes (CPU scales them by its fitted factors afterwards)
    assert est.terms["attention scores"] == 0
    assert est.terms["other"] == 2 * sum(FAST.values()) * TOKENS


def test_kernel_paths_follow_switch_and_device():
    llama = {"type": "LlamaConfig", "use_flash_attention": True}
    on, off = (dict(flash_attention=v, fused_norm=v, norm_cast_recompute=v, mask_compression=False)
               for v in (True, False))
    assert kernel_paths(llama, "Ascend") == on
    assert kernel_paths({**llama, "fused_rms_norm": False, "use_flash_attention": False},
                        "Ascend") == off
    for target in ("CPU", "GPU"):
        assert kernel_paths(llama, target) == off
    # ChatGLM2's RMSNorm takes the primitive whenever it exists (MindFormers r1.3); GPT-2's
    # LayerNorm is one primitive everywhere, so it has no "fused" variant.
    # ChatGLM2RMSNorm keeps its cast (no recompute() in glm2_modules.py)
    glm2 = kernel_paths({"type": "ChatGLM2Config"}, "Ascend")
    assert glm2["fused_norm"] is True and glm2["norm_cast_recompute"] is False
    assert kernel_paths({"type": "GPT2Config", "use_flash_attention": True}, "Ascend") == {
        "flash_attention": True, "fused_norm": False, "norm_cast_recompute": False,
        "mask_compression": False}
    # use_attn_mask_compression (Llama, flash attention, Ascend): the constant compressed mask
    assert kernel_paths({**llama, "use_attn_mask_compression": True}, "Ascend")["mask_compression"]
    assert not kernel_paths({**llama, "use_attn_mask_compression": True}, "CPU")["mask_compression"]


def test_mask_compression_holds_no_per_token_mask():
    """FLASH's 256 B per token (the uint8 (B, 1, S, S) mask, 256 keys) goes: one 2048 × 2048
    constant replaces it."""
    est = estimate(cfg(FA_ON, "model.model_config.use_attn_mask_compression=True"),
                   device_target="Ascend")
    assert est.layout.mask_compression
    assert per_token(est) == {k: v for k, v in FLASH.items() if k != "attention mask"}


def test_llama_fused_norm_keeps_its_input_not_the_fp32_cast():
    """bf16 compute (residual dtype follows it), fp32 norm weights: LlamaRMSNorm recomputes the
    cast of x to fp32, so each norm keeps x, 64 × 2 B, and rstd 4 B: 2 × 132 = 264; the
    composite RMSNorm keeps the fp32 cast, 64 × 4 B, and its fp32 rsqrt: 2 × 260 = 520."""
    bf16 = ("model.model_config.compute_dtype=bfloat16", FA_ON)
    fused = estimate(cfg(*bf16), device_target="Ascend")
    plain = estimate(cfg(*bf16, "model.model_config.fused_rms_norm=False"), device_target="Ascend")
    assert fused.layout.norm_cast_recompute
    assert per_token(fused)["norm inputs"] == 264 and per_token(plain)["norm inputs"] == 520


def test_low_precision_softmax_and_compute_dtypes():
    """bf16 compute, fp32 softmax: softmax out 4 B + its bf16 cast 2 B = 6 B per score;
    bf16 compute, fp16 softmax: 2 B, no cast (same width), + the Select's bool condition 1 B
    (non-fp32 softmax replaces masked scores instead of adding a bias) = 3 B."""
    bf16 = ("model.model_config.compute_dtype=bfloat16", FA_OFF)
    est = estimate(cfg(*bf16, "model.model_config.softmax_compute_type=float32"),
                   device_target="Ascend")
    assert per_token(est)["attention scores"] == 4 * 256 * 6
    est = estimate(cfg(*bf16, "model.model_config.softmax_compute_type=float16"),
                   device_target="Ascend")
    assert per_token(est)["attention scores"] == 4 * 256 * 3
    # q/k/v in bf16: 3 × 64 × 2 B; FFN 3 × 192 × 2 B
    assert per_token(est)["attention q/k/v/out"] == 384
    assert per_token(est)["ffn"] == 1152


def test_fused_norm_saves_the_normalised_tensor_of_a_trainable_norm():
    """Full finetune: the composite RMSNorm's weight gradient reads the normalised tensor
    (64 × 4 B residual, one per norm); the RmsNorm primitive recomputes it from its saved input
    and rstd. With frozen norms (LoRA) both paths hold the same."""
    fused = estimate(cfg(FULL, FA_ON), device_target="Ascend")
    plain = estimate(cfg(FULL, FA_ON, "model.model_config.fused_rms_norm=False"),
                     device_target="Ascend")
    assert fused.layout.fused_norm and not plain.layout.fused_norm
    # full finetune weight-grad inputs, fused: norm1 (64·4) + norm2 (64·4) + ffn_mid (192·4)
    # (wo reads FA's output) = 1,280; composite norms add 2 × 64 × 4 = 512
    assert per_token(fused)["weight-grad inputs"] == 1280
    assert per_token(plain)["weight-grad inputs"] == 1280 + 512
    lora = [per_token(estimate(cfg(FA_ON, *extra), device_target="Ascend"))
            for extra in ((), ("model.model_config.fused_rms_norm=False",))]
    assert lora[0] == lora[1]


def test_recompute_variants_by_hand():
    """The stage arithmetic: 2 layers, per layer 4,096 score bytes and 4,232 other bytes per
    token; a layer's input is 64 × 4 B = 256 B per token."""
    scores, other, layer_in = 4096.0, 4232.0, 256.0
    plain = [(scores, other, False)] * 2
    assert stage_activations(plain, layer_in, 1, True) == (2 * 4096, 2 * 4232)
    # full recompute: every layer keeps its input, one layer is rebuilt in full
    full = [(scores, other, True)] * 2
    assert stage_activations(full, layer_in, 1, True) == (4096, 2 * 256 + 4232)
    # 1F1B with 3 micro-batches in flight on the first of 3 stages
    assert stage_activations(full, layer_in, 3, True) == (3 * 4096, 3 * (2 * 256 + 4232))
    # recompute: [1] — the first layer recomputed, the second keeping its set
    mixed = [(scores, other, True), (scores, other, False)]
    assert stage_activations(mixed, layer_in, 1, True) == (2 * 4096, 256 + 4232 + 4232)
    # forward only (eval/predict): one layer's tensors at a time
    assert stage_activations(plain, layer_in, 1, False) == (4096, 4232)


def _inventory(select, *overrides, strategies=True):
    """strategies=True: the composite attention (MindSpore's backward) that sharded runs keep."""
    from petrun.plan.estimator import layer_inventory, model_of, pet_of
    c = cfg(FA_OFF, *overrides)
    arch, _, specs, dims = model_of(c, "Ascend")
    pet = pet_of(c, specs, dims, arch, "Ascend", "finetune")
    return layer_inventory(dims, pet, pet.params,
                           Layout(device_target="Ascend", strategies=strategies), TOKENS, 256,
                           select=select)


def test_select_recompute_inventory_by_hand():
    """Llama's select set (MindFormers: attention ops when not flash, SiLU and the gate·up Mul):
    no scores; q, k, v kept as projected: q 64 + k 32 + v 32 = 128 × 4 B = 512 (not 768, the
    query and both repeated to 4 heads); SwiGLU keeps gate and up, 2 × 192 × 4 B = 1,536 (not
    2,304 with silu(gate))."""
    inv = _inventory(("feed_forward.mul", "feed_forward.act", "attention.apply_rotary",
                      "attention.core"))
    assert "attention scores" not in inv
    assert inv["attention q/k/v/out"] == 512 * TOKENS
    assert inv["ffn"] == 1536 * TOKENS
    plain = _inventory(())
    assert plain["attention scores"] == 4096 * TOKENS and plain["ffn"] == 2304 * TOKENS
    # the fp32 core holds no scores anyway; select recompute still drops its repeated k, v and
    # output (the core cell is recomputed from q, k, v as projected)
    fast = _inventory((), strategies=False)
    assert "attention scores" not in fast and fast["attention q/k/v/out"] == 1024 * TOKENS
    fast_sel = _inventory(("attention.core",), strategies=False)
    assert fast_sel["attention q/k/v/out"] == 512 * TOKENS
    # full finetune: w2's input (the gate·up product, 192 × 4 B) is a weight-grad input unless
    # the Mul is recomputed
    full_plain, full_sel = _inventory((), FULL), _inventory(("feed_forward.mul",), FULL)
    assert full_plain["weight-grad inputs"] - full_sel["weight-grad inputs"] == 768 * TOKENS


def test_recompute_config_is_counted_as_the_model_applies_it():
    on = cfg(FA_OFF, "recompute_config.recompute=True")
    lay = layout_from_config(on, device_target="Ascend")
    assert lay.recompute and len(lay.recompute_layers) == 2
    est, plain = estimate(on, device_target="Ascend"), estimate(cfg(FA_OFF), device_target="Ascend")
    # fp32 core, per token: plain 2 × 4,488 (FAST); full recompute: one layer rebuilt in full
    # plus every layer's input, 4,488 + 2 × 256
    assert plain.activations == 2 * 4488 * TOKENS
    assert est.activations == (4488 + 2 * 256) * TOKENS
    # select_recompute: per layer q/k/v/out 1,024 → 512, ffn 2,304 → 1,536:
    # 4,488 − 512 − 768 = 3,208 per layer
    sel = estimate(cfg(FA_OFF, "recompute_config.select_recompute=True"), device_target="Ascend")
    assert sel.layout.select_recompute and sel.activations == 2 * 3208 * TOKENS
    # with flash attention only the FFN ops are selected
    fa = estimate(cfg(FA_ON, "recompute_config.select_recompute=True"), device_target="Ascend")
    fa_plain = estimate(cfg(FA_ON), device_target="Ascend")
    assert fa_plain.activations - fa.activations == 2 * 768 * TOKENS
    # at seq 2,048 the scores are worth a lever: recompute is offered now, and flash attention
    longer = cfg(FA_OFF, *SHARDED, "model.model_config.seq_length=2048")
    offered = [lv.overrides for lv in levers(longer, estimate(longer, device_target="Ascend"))]
    assert ["recompute_config.recompute=True"] in offered
    assert ["model.model_config.use_flash_attention=True"] in offered


# ---- parallel optimizer (MindSpore: trainable only, ≥ threshold, dim 0 divisible) ----
PAR = ("use_parallel=True", "parallel.parallel_mode=1", "parallel.enable_parallel_optimizer=True")
# full finetune tiny: 164,160 fp32 parameters = 656,640 B; embedding and lm_head 512 × 64 each
# (128 KiB apiece, the only tensors at or above the default 64 KiB threshold)
ALL_B, BIG_B, ALL_N, BIG_N = 656_640, 262_144, 164_160, 65_536


def test_parallel_optimizer_shards_weights_states_and_gradient_slices():
    est = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=4"), device_target="Ascend")
    assert est.layout.dp == 4 and est.params_trainable == ALL_N
    # weights: the small tensors whole, the two big ones as a quarter slice plus the gathered
    # full copy kept for backward (no parallel_optimizer_comm_recompute; fp32 compute: fp32 copy)
    assert est.weights == (ALL_B - BIG_B) + BIG_B / 4 + BIG_B
    # gradients: a sharded weight's gradient is reduce-scattered to its slice
    assert est.gradients == (ALL_B - BIG_B) + BIG_B / 4
    # FP32StateAdamWeightDecay: m and v in fp32, 8 B per element, big ones ÷ 4
    assert est.optimizer == 8 * (ALL_N - BIG_N) + 8 * BIG_N / 4
    # parallel_optimizer_comm_recompute would re-gather in backward instead, but MindFormers
    # r1.3's Llama2/ChatGLM2/GPT-2 never pass it to cell.recompute() (LayerSetting passes only
    # recompute_slice_activation), and neither does petrun: copy still kept
    again = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=4",
                         "recompute_config.parallel_optimizer_comm_recompute=True"),
                     device_target="Ascend")
    assert again.weights == est.weights


def test_gathered_copy_is_in_compute_precision():
    """fp32 weights, bf16 compute, threshold 0, dp 4: every tensor is a quarter slice (fp32)
    plus its gathered copy, cast to bf16 first where the layer casts it (the 131,072 Linear
    weights: wq 4,096 + wk 2,048 + wv 2,048 + wo 4,096 + 3 FFN × 12,288 = 49,152 per layer,
    × 2, + lm_head 32,768) and fp32 where it is used as is (embedding 32,768; the 320 RMSNorm
    weights, read by the fused RmsNorm on Ascend)."""
    est = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=4",
                       "parallel.parallel_optimizer_config.parallel_optimizer_threshold=0",
                       "model.model_config.compute_dtype=bfloat16"), device_target="Ascend")
    assert est.weights == ALL_B / 4 + 131_072 * 2 + (32_768 + 320) * 4


def test_parallel_optimizer_threshold_zero_and_shard_size():
    zero = "parallel.parallel_optimizer_config.parallel_optimizer_threshold=0"
    est = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=4", zero),
                   device_target="Ascend")
    # every dim 0 (512, 64, 32, 192) divides by 4: all split, all gathered
    assert est.weights == ALL_B / 4 + ALL_B
    assert est.gradients == ALL_B / 4
    assert est.optimizer == 8 * ALL_N / 4
    size2 = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=4", zero,
                         "parallel.parallel_optimizer_config.optimizer_weight_shard_size=2"),
                     device_target="Ascend")
    assert size2.optimizer == 8 * ALL_N / 2


def test_parallel_optimizer_needs_dim0_divisible_by_the_group():
    """dp 3: only w1 and w3 (dim 0 = 192) divide; 2 layers × 2 × 192 × 64 = 49,152 params."""
    zero = "parallel.parallel_optimizer_config.parallel_optimizer_threshold=0"
    est = estimate(cfg(FULL, *PAR, "parallel_config.data_parallel=3", zero),
                   device_target="Ascend")
    split_n = 2 * 2 * 192 * 64
    assert est.optimizer == 8 * (ALL_N - split_n) + 8 * split_n / 3


def test_parallel_optimizer_leaves_frozen_weights_whole():
    """LoRA: only the 7,168 adapter parameters train; the frozen 164,160 stay whole on every
    card even with threshold 0 (MindSpore shards only parameters that require grad). The
    adapters' dim 0 (8 for A, 64/32 for B) divides by 2."""
    zero = "parallel.parallel_optimizer_config.parallel_optimizer_threshold=0"
    est = estimate(cfg(*PAR, "parallel_config.data_parallel=2", zero), device_target="Ascend")
    assert est.params_trainable == 7_168
    assert est.weights == 4 * ALL_N + 4 * 7_168 / 2 + 4 * 7_168
    assert est.gradients == 4 * 7_168 / 2
    assert est.optimizer == 8 * 7_168 / 2


def test_param_init_type_sets_weight_bytes():
    """bf16 weights on Ascend: every matmul and the embedding in 2 B, the five RMSNorm weights
    (2 per layer + final, 64 each = 320) in layernorm_compute_type fp32; on CPU bf16 is stored
    as fp32 (no bf16 kernels)."""
    bf16 = "model.model_config.param_init_type=bfloat16"
    est = estimate(cfg(FULL, bf16), device_target="Ascend")
    assert est.params_by_dtype["bfloat16"] == [ALL_N - 320, 2 * (ALL_N - 320)]
    assert est.params_by_dtype["float32"] == [320, 4 * 320]
    assert est.weights == 2 * (ALL_N - 320) + 4 * 320
    cpu = estimate(cfg(FULL, bf16), device_target="CPU")
    assert set(cpu.params_by_dtype) == {"float32"} and cpu.weights == ALL_B


def test_recompute_slice_activation_splits_the_kept_layer_input_over_mp():
    """Full recompute keeps each layer's input, 64 × 4 B = 256 B per token; with
    recompute_slice_activation MindSpore keeps it split over model_parallel 2: 128 B. Two layers:
    256 B per token less."""
    base = (FA_OFF, *SHARDED, "parallel_config.model_parallel=2", "parallel_config.data_parallel=1",
            "recompute_config.recompute=True")
    whole, sliced = (estimate(cfg(*base, f"recompute_config.recompute_slice_activation={v}"),
                              device_target="Ascend", devices=2) for v in (False, True))
    assert whole.layout.mp == 2 and whole.layout.recompute
    assert whole.activations - sliced.activations == 2 * (256 - 128) * TOKENS
