"""petrun.parallel.strategy as data: which dims each family's parameters are cut on, LoRA following
its base, MindFormers' pipeline stage formula, optimizer sharding, and the per-op strategies."""
from __future__ import annotations

import numpy as np
import pytest

from petrun.errors import UserError
from petrun.parallel.strategy import (Layout, ParallelDims, cell_strategies, layer_stage,
                                      plan_layouts)

D = ParallelDims(dp=2, mp=4)
COL, ROW, WHOLE = (0, -1), (-1, 0), (-1, -1)

LLAMA = {  # 2 layers, hidden 64, GQA kv 32, ffn 192, vocab 512
    "model.tok_embeddings.embedding_weight": (512, 64),
    **{k: v for i in range(2) for k, v in {
        f"model.layers.{i}.attention_norm.weight": (64,),
        f"model.layers.{i}.attention.wq.weight": (64, 64),
        f"model.layers.{i}.attention.wk.weight": (32, 64),
        f"model.layers.{i}.attention.wv.weight": (32, 64),
        f"model.layers.{i}.attention.wo.weight": (64, 64),
        f"model.layers.{i}.ffn_norm.weight": (64,),
        f"model.layers.{i}.feed_forward.w1.weight": (192, 64),
        f"model.layers.{i}.feed_forward.w3.weight": (192, 64),
        f"model.layers.{i}.feed_forward.w2.weight": (64, 192)}.items()},
    "model.norm_out.weight": (64,),
    "lm_head.weight": (512, 64),
}


def maps(plan):
    return {n: l.tensor_map for n, l in plan.layouts.items()}


def test_llama2_column_row_and_replicated():
    m = maps(plan_layouts(LLAMA, D, "llama2"))
    for w in ("wq", "wk", "wv"):
        assert m[f"model.layers.0.attention.{w}.weight"] == COL
    assert m["model.layers.1.attention.wo.weight"] == ROW
    assert m["model.layers.0.feed_forward.w1.weight"] == COL
    assert m["model.layers.0.feed_forward.w3.weight"] == COL
    assert m["model.layers.0.feed_forward.w2.weight"] == ROW
    assert m["model.layers.0.attention_norm.weight"] == (-1,)
    assert m["model.norm_out.weight"] == (-1,)
    # MindFormers' default vocab_emb_dp True: embedding and head stay whole
    assert m["model.tok_embeddings.embedding_weight"] == WHOLE and m["lm_head.weight"] == WHOLE
    plan = plan_layouts(LLAMA, D, "llama2")
    assert {l.dev_matrix for l in plan.layouts.values()} == {(2, 4)}


def test_vocab_parallel_when_vocab_emb_dp_is_false():
    m = maps(plan_layouts(LLAMA, ParallelDims(dp=2, mp=4, vocab_emb_dp=False), "llama2"))
    assert m["model.tok_embeddings.embedding_weight"] == COL and m["lm_head.weight"] == COL
    odd = dict(LLAMA, **{"lm_head.weight": (510, 64)})
    plan = plan_layouts(odd, ParallelDims(dp=2, mp=4, vocab_emb_dp=False), "llama2")
    assert plan.layouts["lm_head.weight"].tensor_map == WHOLE           # MindFormers' fallback
    assert any("510" in n for n in plan.notes)


def test_lora_follows_its_base():
    params = dict(LLAMA)
    for w, (out_, in_) in (("wq", (64, 64)), ("wo", (64, 64))):
        params[f"model.layers.0.attention.{w}.mindpet_delta_lora_a"] = (8, in_)
        params[f"model.layers.0.attention.{w}.mindpet_delta_lora_b"] = (out_, 8)
    m = maps(plan_layouts(params, D, "llama2"))
    # column-parallel base: B split on its out dim, A whole
    assert m["model.layers.0.attention.wq.mindpet_delta_lora_a"] == WHOLE
    assert m["model.layers.0.attention.wq.mindpet_delta_lora_b"] == COL
    # row-parallel base: A split on its in dim, B whole
    assert m["model.layers.0.attention.wo.mindpet_delta_lora_a"] == ROW
    assert m["model.layers.0.attention.wo.mindpet_delta_lora_b"] == WHOLE


def test_glm2_names():
    p = {"transformer.embedding.embedding_weight": (1024, 64),
         "transformer.encoder.layers.0.input_layernorm.weight": (64,),
         "transformer.encoder.layers.0.self_attention.query_key_value.weight": (96, 64),
         "transformer.encoder.layers.0.self_attention.query_key_value.bias": (96,),
         "transformer.encoder.layers.0.self_attention.dense.weight": (64, 64),
         "transformer.encoder.layers.0.post_attention_layernorm.weight": (64,),
         "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight": (256, 64),
         "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight": (64, 128),
         "transformer.encoder.final_layernorm.weight": (64,),
         "transformer.output_layer.weight": (1024, 64)}
    m = maps(plan_layouts(p, ParallelDims(dp=1, mp=2, vocab_emb_dp=False), "glm2"))
    assert m["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == COL
    assert m["transformer.encoder.layers.0.self_attention.query_key_value.bias"] == (0,)
    assert m["transformer.encoder.layers.0.self_attention.dense.weight"] == ROW
    assert m["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"] == COL
    assert m["transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"] == ROW
    assert m["transformer.output_layer.weight"] == COL
    assert m["transformer.encoder.final_layernorm.weight"] == (-1,)


def test_gpt2_in_out_weights_are_cut_on_the_right_dim():
    p = {"backbone.embedding.word_embedding.embedding_table": (1000, 64),
         "backbone.embedding.position_embedding.embedding_table": (128, 64),
         "backbone.blocks.0.layernorm1.gamma": (64,), "backbone.blocks.0.layernorm1.beta": (64,),
         "backbone.blocks.0.attention.dense1.weight": (64, 64), "backbone.blocks.0.attention.dense1.bias": (64,),
         "backbone.blocks.0.attention.projection.weight": (64, 64),   # [in, out]
         "backbone.blocks.0.attention.projection.bias": (64,),
         "backbone.blocks.0.output.mapping.weight": (64, 256),        # [in, out]
         "backbone.blocks.0.output.mapping.bias": (256,),
         "backbone.blocks.0.output.projection.weight": (256, 64),     # [in, out]
         "backbone.blocks.0.output.projection.bias": (64,),
         "backbone.layernorm.gamma": (64,), "backbone.layernorm.beta": (64,),
         "backbone.blocks.0.attention.dense1.mindpet_delta_lora_a": (4, 64),
         "backbone.blocks.0.attention.dense1.mindpet_delta_lora_b": (64, 4)}
    m = maps(plan_layouts(p, ParallelDims(dp=1, mp=2), "gpt2"))
    assert m["backbone.blocks.0.attention.dense1.weight"] == COL          # [out, in]: dim 0
    assert m["backbone.blocks.0.attention.dense1.bias"] == (0,)
    assert m["backbone.blocks.0.attention.projection.weight"] == COL     # row-parallel on [in, out]: dim 0
    assert m["backbone.blocks.0.attention.projection.bias"] == (-1,)
    assert m["backbone.blocks.0.output.mapping.weight"] == ROW           # column-parallel on [in, out]: dim 1
    assert m["backbone.blocks.0.output.mapping.bias"] == (0,)
    assert m["backbone.blocks.0.output.projection.weight"] == COL
    assert m["backbone.embedding.position_embedding.embedding_table"] == WHOLE
    assert m["backbone.blocks.0.attention.dense1.mindpet_delta_lora_b"] == COL
    assert m["backbone.blocks.0.attention.dense1.mindpet_delta_lora_a"] == WHOLE


def test_unknown_parameter_is_a_bug_not_silence():
    with pytest.raises(ValueError, match="no llama2 layout rule.*model.extra.weight"):
        plan_layouts({**LLAMA, "model.extra.weight": (4, 4)}, D, "llama2")


def test_model_parallel_must_divide():
    with pytest.raises(UserError, match="model_parallel 3 does not divide.*wq.weight dim 0"):
        plan_layouts(LLAMA, ParallelDims(dp=1, mp=3), "llama2")


@pytest.mark.parametrize("n, pp, offset, want", [
    (32, 2, 0, [0] * 16 + [1] * 16),
    (2, 2, 0, [0, 1]),
    (4, 3, 0, [0, 1, 2, 2]),                    # MindFormers: per = int((4 + 1) / 3) = 1
    (5, 2, 0, [0, 0, 0, 1, 1]),
    (4, 2, 1, [0, 1, 1, 1]),
    (6, 2, [1, -1], [0, 0, 0, 0, 1, 1]),         # list offset: 4 layers then 2
])
def test_pipeline_stage_formula(n, pp, offset, want):
    assert [layer_stage(i, n, pp, offset) for i in range(n)] == want


def test_pipeline_places_embedding_first_and_head_last():
    plan = plan_layouts(LLAMA, ParallelDims(dp=1, mp=2, pp=2), "llama2")
    st = {n: l.stage for n, l in plan.layouts.items()}
    assert st["model.tok_embeddings.embedding_weight"] == 0
    assert st["model.layers.0.attention.wq.weight"] == 0 and st["model.layers.1.attention.wq.weight"] == 1
    assert st["model.norm_out.weight"] == 1 and st["lm_head.weight"] == 1
    assert set(plan.stage(0)) | set(plan.stage(1)) == set(LLAMA)


def test_optimizer_shard_only_for_trainable_and_large_enough():
    params = {**LLAMA, "model.layers.0.attention.wq.mindpet_delta_lora_a": (8, 64),
              "model.layers.0.attention.wq.mindpet_delta_lora_b": (64, 8)}
    dims = ParallelDims(dp=2, mp=4, optimizer_shard=True, optimizer_threshold_kb=0)
    trainable = ["model.layers.0.attention.wq.mindpet_delta_lora_a",
                 "model.layers.0.attention.wq.mindpet_delta_lora_b"]
    lay = plan_layouts(params, dims, "llama2", trainable=trainable).layouts
    a = lay["model.layers.0.attention.wq.mindpet_delta_lora_a"]   # whole → over all 8 ranks
    b = lay["model.layers.0.attention.wq.mindpet_delta_lora_b"]   # mp-split → over the dp ranks
    assert (a.opt_shard_size, a.opt_shard_step) == (8, 1)
    assert (b.opt_shard_size, b.opt_shard_step) == (2, 4)
    assert lay["model.layers.0.attention.wq.weight"].opt_shard_size == 0      # frozen
    small = plan_layouts(params, ParallelDims(dp=2, mp=4, optimizer_shard=True), "llama2",
                         trainable=trainable).layouts     # 512 B slices < 64 KB threshold
    assert small["model.layers.0.attention.wq.mindpet_delta_lora_b"].opt_shard_size == 0


def test_layout_slices_are_the_numpy_pieces():
    full = np.arange(16 * 8).reshape(16, 8)
    col = Layout((2, 4), COL)
    for r in range(8):
        np.testing.assert_array_equal(full[col.slices(full.shape, r)], np.split(full, 4, 0)[r % 4])
    both = Layout((2, 2), (1, 0))
    for r in range(4):
        d, m = divmod(r, 2)
        np.testing.assert_array_equal(full[both.slices(full.shape, r)], np.split(np.split(full, 2, 0)[d], 2, 1)[m])
    assert col.shard_shape((16, 8)) == (4, 8) and col.full_shape((4, 8)) == (16, 8)
    assert Layout((2, 4), COL, 2, 4).shard_shape((16, 8)) == (2, 8)


def test_cell_strategies_are_read_off_the_layouts():
    d = ParallelDims(dp=2, mp=4)
    col, row, whole = Layout((2, 4), COL), Layout((2, 4), ROW), Layout((2, 4), WHOLE)
    bias_col, bias_whole = Layout((2, 4), (0,)), Layout((2, 4), (-1,))
    assert cell_strategies("linear", d, {"weight": col, "bias": bias_col}) == {
        "matmul": ((2, 1), (4, 1)), "bias_add": ((2, 4), (4,))}
    assert cell_strategies("linear", d, {"weight": row, "bias": bias_whole}) == {
        "matmul": ((2, 4), (1, 4)), "bias_add": ((2, 1), (1,))}
    assert cell_strategies("linear", d, {"weight": col}) == {"matmul": ((2, 1), (4, 1))}
    # GPT-2's [in, out] weights: column-parallel is cut on dim 1, row-parallel on dim 0
    assert cell_strategies("linear_in_out", d, {"weight": row})["matmul"] == ((2, 1), (1, 4))
    assert cell_strategies("linear_in_out", d, {"weight": col})["matmul"] == ((2, 4), (4, 1))
    assert cell_strategies("embedding", d, {"embedding_weight": whole}) == {"gather": ((1, 1), (2, 1))}
    assert cell_strategies("embedding", d, {"embedding_table": col}) == {"gather": ((4, 1), (2, 1))}
    assert cell_strategies("positions", d, {"embedding_table": whole}) == {"gather": ((1, 1), (1,))}
    assert cell_strategies("tied_head", d, {"table": col}) == {"matmul": ((2, 1), (4, 1))}
    # PET encoders have no batch axis: dp does not split them
    assert cell_strategies("linear", d, {"weight": whole}, batched=False) == {"matmul": ((1, 1), (1, 1))}


def test_lora_strategies_follow_the_base():
    d = ParallelDims(dp=2, mp=4)
    beside_column = cell_strategies("lora", d, {"mindpet_delta_lora_a": Layout((2, 4), WHOLE),
                                                "mindpet_delta_lora_b": Layout((2, 4), COL)})
    assert beside_column["lora_a"] == ((2, 1), (1, 1)) and beside_column["lora_b"] == ((2, 1), (4, 1))
    assert beside_column["lora_add"] == ((2, 1, 4), (2, 1, 4))
    beside_row = cell_strategies("lora", d, {"mindpet_delta_lora_a": Layout((2, 4), ROW),
                                             "mindpet_delta_lora_b": Layout((2, 4), WHOLE)})
    assert beside_row["lora_a"] == ((2, 4), (1, 4)) and beside_row["lora_b"] == ((2, 1), (1, 1))
    assert beside_row["lora_dropout.dropout"] == ((2, 1, 4),)


def test_activation_strategies():
    d = ParallelDims(dp=2, mp=4)
    assert cell_strategies("rmsnorm", d)["mul_weight"] == ((2, 1, 1), (1,))
    assert cell_strategies("attention", d)["qk"] == ((2, 4, 1, 1), (2, 4, 1, 1))
    assert cell_strategies("heads", d) == {"split_heads": ((2, 1, 4, 1),), "merge_heads": ((2, 4, 1, 1),)}
    assert cell_strategies("gated_mlp", d)["mul"] == ((2, 1, 4), (2, 1, 4))
    with pytest.raises(ValueError, match="unknown cell kind"):
        cell_strategies("conv", d)


def test_ia3_and_adapter_parameters_follow_their_layer():
    params = {**LLAMA, "model.layers.1.attention.wk.mindpet_delta_ia3_l": (32, 1),
              "model.layers.1.feed_forward.w2.mindpet_delta_ia3_l": (1, 192),
              "model.layers.1.attention.wo.mindpet_delta_adapter_down.weight": (16, 64),
              "prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table": (16, 128)}
    plan = plan_layouts(params, ParallelDims(dp=1, mp=4, pp=2), "llama2")
    lay = plan.layouts
    assert lay["model.layers.1.attention.wk.mindpet_delta_ia3_l"].tensor_map == COL     # base out
    assert lay["model.layers.1.feed_forward.w2.mindpet_delta_ia3_l"].tensor_map == ROW  # base in
    assert lay["model.layers.1.attention.wo.mindpet_delta_adapter_down.weight"].tensor_map == WHOLE
    assert {n: l.stage for n, l in lay.items() if "mindpet" in n} == {
        "model.layers.1.attention.wk.mindpet_delta_ia3_l": 1,
        "model.layers.1.feed_forward.w2.mindpet_delta_ia3_l": 1,
        "model.layers.1.attention.wo.mindpet_delta_adapter_down.weight": 1,
        "prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table": 0}


@pytest.mark.parametrize("config", ["llama2/lora_llama2_tiny.yaml", "glm2/lora_glm2_tiny.yaml",
                                    "gpt2/lora_gpt2_tiny.yaml"])
def test_every_parameter_of_each_real_model_has_a_layout(config):
    """Built models (not name lists) so a renamed parameter fails here instead of silently
    missing from the strategy files."""
    from petrun.config import load_config
    from petrun.build import plan_for_config
    from tests.conftest import ROOT
    path = ROOT / "configs" / config
    if not path.exists():
        pytest.skip(f"{config} not in this checkout")
    pp = 1 if "gpt2" in config else 2      # GPT2's tied head: no pipeline stages (refused)
    cfg = load_config(str(path), ["parallel.parallel_mode=1", "parallel_config.data_parallel=1",
                                  "parallel_config.model_parallel=2", f"parallel_config.pipeline_stage={pp}"])
    plan = plan_for_config(cfg)
    assert plan.layouts and set(plan.stage(0)) and (pp == 1 or set(plan.stage(1)))
    lora_b = [l for n, l in plan.layouts.items() if n.endswith("lora_b")]
    assert lora_b and all(l.tensor_map in (COL, WHOLE) for l in lora_b)
    assert any(l.is_split() for l in plan.layouts.values())
