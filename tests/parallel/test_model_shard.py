"""The shard strategies and pipeline stages petrun's models declare for semi-auto parallel, checked
as data on a CPU (where semi-auto parallel itself cannot run): models are built with a
parallel_config of dp 2 × mp 4 × pp 2 while MindSpore's context stays stand-alone.

Oracles: the strategy files `petrun ckpt strategy` writes (every weight operand must be cut as
its file layout says, every cell must sit on its parameters' stage), explicit MindFormers-style
expectations (column / row / vocab parallel, LoRA A and B following their base), and a PyNative
forward that records each sharded primitive's real operand shapes (each strategy must have one
entry per operand, of its rank, dividing every dim).
"""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from petrun.api import build_model
from petrun.config import load_config
from petrun.errors import UserError
from petrun.parallel.strategy import layer_stage, layers_per_stage
from petrun.build import plan_for_config
from petrun.parallel.strategy_file import read_strategy, write_plan
from tests.conftest import ROOT

DP, MP, PP = 2, 4, 2
PIPELINED = ["llama2", "glm2"]
PARALLEL = ["load_checkpoint=", "use_parallel=True", "parallel.parallel_mode=1",
            f"parallel_config.data_parallel={DP}", f"parallel_config.model_parallel={MP}",
            f"parallel_config.pipeline_stage={PP}"]
# Head counts mp divides, grouped-query attention (so the kv tiling runs) and non-zero dropouts
# (so every dropout primitive runs) on the tiny configs.
MODELS = {
    "llama2": ("llama2/lora_llama2_tiny.yaml", [
        "model.model_config.num_heads=8", "model.model_config.n_kv_heads=4",
        "model.model_config.pet_config.lora_dropout=0.1"]),
    "glm2": ("glm2/lora_glm2_tiny.yaml", [
        "model.model_config.num_attention_heads=8", "model.model_config.multi_query_group_num=4",
        "model.model_config.kv_channels=8", "model.model_config.hidden_dropout=0.1",
        "model.model_config.attention_dropout=0.1", "model.model_config.pet_config.lora_dropout=0.1"]),
    # GPT2 ties its head to the embedding table: no pipeline stages (refused, tested below).
    # LoRA on its [in, out] layers too (attention.projection, output.mapping/projection).
    "gpt2": ("gpt2/lora_gpt2_tiny.yaml", [
        "parallel_config.pipeline_stage=1",
        "model.model_config.pet_config.target_modules='.*dense1|.*dense3|.*projection|.*mapping'",
        "model.model_config.hidden_dropout_rate=0.1", "model.model_config.attention_dropout_rate=0.1",
        "model.model_config.embedding_dropout_prob=0.1",
        "model.model_config.pet_config.lora_dropout=0.1"]),
}
# Which operand of which role is which parameter (by local name): the test's own reading of the cells.
LINEAR = [("matmul", 1, "weight"), ("bias_add", 1, "bias")]
WEIGHT_OPERANDS = {
    "linear": LINEAR, "linear_in_out": LINEAR,
    "embedding": [("gather", 0, "embedding_weight"), ("gather", 0, "embedding_table")],
    "positions": [("gather", 0, "embedding_table")],
    "lora": [("lora_a", 1, "mindpet_delta_lora_a"), ("lora_b", 1, "mindpet_delta_lora_b")],
    "ia3": [("scale_mul", 1, "mindpet_delta_ia3_l")],
    "rmsnorm": [("mul_weight", 1, "weight")],
    "layernorm": [("norm", 1, "gamma"), ("norm", 2, "beta")],
}

def config(family, *extra):
    path, overrides = MODELS[family]
    return load_config(str(ROOT / "configs" / path), PARALLEL + overrides + list(extra))


def primitives(net):
    """{(cell path, attribute): primitive} for every primitive attribute of every cell."""
    return {(path, name): prim for path, cell in net.cells_and_names()
            for name, prim in vars(cell).get("_primitives", {}).items() if prim is not None}


def stage_of(cell):
    return getattr(cell, "_pipeline_stage", None)


@pytest.fixture(scope="module")
def built():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return {family: build_model(config(family), device_target="CPU") for family in MODELS}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The layouts of the strategy files `petrun ckpt strategy` writes, per family: llama2 through
    the real CLI, the others through the functions it calls."""
    from tests.conftest import run_cli
    out = {}
    for family in MODELS:
        d = tmp_path_factory.mktemp(family)
        if family == "llama2":
            path, overrides = MODELS[family]
            r = run_cli("ckpt", "strategy", "--config", ROOT / "configs" / path, "--out", d,
                        *PARALLEL, *overrides)
            assert r.returncode == 0, r.stdout + r.stderr
        else:
            write_plan(plan_for_config(config(family)), d)
        stage0 = read_strategy(d / "ckpt_strategy_rank_0.ckpt")
        if family in PIPELINED:
            stage1 = read_strategy(d / f"ckpt_strategy_rank_{DP * MP}.ckpt")
            assert not set(stage0) & set(stage1)
            stage0 = {**stage0, **stage1}
        out[family] = stage0
    return out


# ------------------------------------------------------------------------- stand-alone: untouched
@pytest.mark.parametrize("extra", [[], ["use_parallel=True", "parallel.parallel_mode=0"],
                                   ["parallel.parallel_mode=1"]])   # semi-auto, but use_parallel off
def test_standalone_and_data_parallel_builds_declare_nothing(extra):
    cfg = load_config(str(ROOT / "configs/llama2/lora_llama2_tiny.yaml"), ["load_checkpoint="] + extra)
    net = build_model(cfg, device_target="CPU")
    assert all(getattr(p, "in_strategy", None) is None for p in primitives(net).values())
    assert all(stage_of(c) is None for _, c in net.cells_and_names())


def test_sharding_leaves_single_process_results_bit_identical():
    """Strategies are inert outside semi-auto parallel: the same weights give the same bits."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    plain = build_model(config("llama2", "use_parallel=False"), device_target="CPU")
    sharded = build_model(config("llama2"), device_target="CPU")
    assert primitives(sharded)[("model.layers.0.attention.wo", "lora_a")].in_strategy
    rng = np.random.default_rng(1)
    for p, q in zip(plain.get_parameters(), sharded.get_parameters()):
        assert p.name == q.name
        value = Tensor((rng.standard_normal(p.shape) * 0.05).astype(np.float32))
        p.set_data(value)
        q.set_data(value)
    ids = Tensor(rng.integers(3, 500, size=(2, 9)).astype(np.int32))
    plain.set_train(False)
    sharded.set_train(False)
    assert np.array_equal(plain(ids).asnumpy(), sharded(ids).asnumpy())


# ------------------------------------------------------------------------- against the strategy files
@pytest.mark.parametrize("family", list(MODELS))
def test_weight_operands_are_cut_as_the_strategy_files_say(built, files, family):
    net, layouts = built[family], files[family]
    covered = set()
    for path, cell in net.cells_and_names():
        kind = getattr(cell, "shard_kind", None)
        own = {p.name.rsplit(".", 1)[-1]: p.name for p in cell.get_parameters(expand=False)}
        if kind == "tied_head":
            own = {"table": cell.table_name}
            assert cell.matmul.in_strategy[1] == layouts[cell.table_name].splits()
            covered.add(cell.table_name)
        for role, index, local in WEIGHT_OPERANDS.get(kind, []):
            if local not in own:
                continue
            got = getattr(cell, role).in_strategy[index]
            want = layouts[own[local]].splits()
            if kind == "ia3":              # the [out, 1] / [1, in] vector is flattened first
                want = (max(want),)
            assert got == want, (path, role, got, want)
            covered.add(own[local])
    assert covered == set(layouts), sorted(set(layouts) - covered)[:5]


def test_pipeline_stages_with_a_tied_head_are_refused():
    with pytest.raises(UserError, match="tied embedding/output table") as e:
        plan_for_config(config("gpt2", "parallel_config.pipeline_stage=2",
                               "parallel_config.data_parallel=2"))
    assert e.value.key == "parallel_config.pipeline_stage"
    with pytest.raises(UserError, match="tie_word_embeddings"):
        build_model(config("llama2", "model.model_config.tie_word_embeddings=True"), device_target="CPU")


@pytest.mark.parametrize("family", PIPELINED)
def test_pipeline_stages_follow_the_layer_rule_and_the_files(built, files, family):
    net, layouts = built[family], files[family]
    cells = dict(net.cells_and_names())
    for path, cell in cells.items():
        for p in cell.get_parameters(expand=False):
            assert stage_of(cell) == layouts[p.name].stage, (path, p.name)
        parts = path.split(".")
        for key in ("layers", "blocks"):
            if key in parts[:-1]:
                i = int(parts[parts.index(key) + 1])
                assert stage_of(cell) == layer_stage(i, 2, PP), path
    last = {"llama2": ["lm_head", "loss", "model.norm_out"], "gpt2": ["head", "loss", "backbone.layernorm"],
            "glm2": ["loss", "transformer.output_layer", "transformer.encoder.final_layernorm"]}[family]
    first = {"llama2": ["model.tok_embeddings", "model.rotary"], "gpt2": ["backbone.embedding"],
             "glm2": ["transformer.embedding", "transformer.rotary_pos_emb"]}[family]
    assert [stage_of(cells[p]) for p in last] == [PP - 1] * len(last)
    assert [stage_of(cells[p]) for p in first] == [0] * len(first)
    assert stage_of(cells[""]) is None        # the model itself spans both stages


# ------------------------------------------------------------------------- MindFormers' layout, as data
def strategies(net, path):
    cell = dict(net.cells_and_names())[path]
    return {name: p.in_strategy for name, p in vars(cell)["_primitives"].items()}


def test_llama2_column_row_and_lora(built):
    net = built["llama2"]
    col, row = ((DP, 1), (MP, 1)), ((DP, MP), (1, MP))
    for w in ("wq", "wk", "wv"):
        assert strategies(net, f"model.layers.0.attention.{w}.base")["matmul"] == col
    assert strategies(net, "model.layers.1.attention.wo.base")["matmul"] == row
    assert strategies(net, "model.layers.0.feed_forward.w1")["matmul"] == col
    assert strategies(net, "model.layers.0.feed_forward.w3")["matmul"] == col
    assert strategies(net, "model.layers.0.feed_forward.w2")["matmul"] == row
    # LoRA A and B have their own matmuls and follow the base
    wq, wo = strategies(net, "model.layers.0.attention.wq"), strategies(net, "model.layers.0.attention.wo")
    assert (wq["lora_a"], wq["lora_b"]) == (((DP, 1), (1, 1)), ((DP, 1), (MP, 1)))
    assert (wo["lora_a"], wo["lora_b"]) == (((DP, MP), (1, MP)), ((DP, 1), (1, 1)))
    # vocab_emb_dp True (MindFormers' default): embedding and head whole, batch split
    assert strategies(net, "model.tok_embeddings")["gather"] == ((1, 1), (DP, 1))
    assert strategies(net, "lm_head")["matmul"] == ((DP, 1), (1, 1))
    heads = (DP, MP, 1, 1)
    core = strategies(net, "model.layers.0.attention.core")
    assert core["qk"] == core["pv"] == (heads, heads) and core["softmax"] == (heads,)
    assert strategies(net, "model.layers.0.attention")["split_heads"] == ((DP, 1, MP, 1),)
    assert strategies(net, "model.norm_out")["square"] == ((DP, 1, 1),)
    assert strategies(net, "model.layers.0.feed_forward")["mul"] == ((DP, 1, MP), (DP, 1, MP))
    assert strategies(net, "model.layers.0.residual")["add"] == ((DP, 1, 1), (DP, 1, 1))


def test_llama2_tied_head_is_cut_like_the_table():
    net = build_model(config("llama2", "model.model_config.tie_word_embeddings=True",
                             "parallel_config.vocab_emb_dp=False", "parallel_config.pipeline_stage=1"),
                      device_target="CPU")
    cells = dict(net.cells_and_names())
    assert "lm_head" not in cells
    assert cells["tied_head"].matmul.in_strategy == ((DP, 1), (MP, 1))
    assert cells["model.tok_embeddings"].gather.in_strategy == ((MP, 1), (DP, 1))


def test_glm2_fused_projections():
    net = build_model(config("glm2", "parallel_config.vocab_emb_dp=False"), device_target="CPU")
    layer = "transformer.encoder.layers.0"
    assert strategies(net, f"{layer}.self_attention.query_key_value.base")["matmul"] == ((DP, 1), (MP, 1))
    assert strategies(net, f"{layer}.self_attention.dense")["matmul"] == ((DP, MP), (1, MP))
    assert strategies(net, f"{layer}.mlp.dense_h_to_4h")["matmul"] == ((DP, 1), (MP, 1))
    assert strategies(net, f"{layer}.mlp.dense_4h_to_h")["matmul"] == ((DP, MP), (1, MP))
    # vocab parallel: table and output layer split on the vocabulary
    assert strategies(net, "transformer.embedding")["gather"] == ((MP, 1), (DP, 1))
    assert strategies(net, "transformer.output_layer")["matmul"] == ((DP, 1), (MP, 1))


def test_gpt2_in_out_weights_and_tied_head():
    net = build_model(config("gpt2", "parallel_config.vocab_emb_dp=False"), device_target="CPU")
    block = "backbone.blocks.0"
    assert strategies(net, f"{block}.attention.dense1.base")["matmul"] == ((DP, 1), (MP, 1))
    assert strategies(net, f"{block}.attention.dense1.base")["bias_add"] == ((DP, MP), (MP,))
    # [in, out] storage: row-parallel projection cut on dim 0, column-parallel mapping on dim 1
    assert strategies(net, f"{block}.attention.projection.base")["matmul"] == ((DP, MP), (MP, 1))
    assert strategies(net, f"{block}.attention.projection.base")["bias_add"] == ((DP, 1), (1,))
    assert strategies(net, f"{block}.output.mapping.base")["matmul"] == ((DP, 1), (1, MP))
    assert strategies(net, f"{block}.output.projection.base")["matmul"] == ((DP, MP), (MP, 1))
    # their LoRA follows the base as on [out, in] layers: A [r, in] split on in beside a row-
    # parallel base, B [out, r] split on out beside a column-parallel one
    proj, mapping = (strategies(net, f"{block}.{n}") for n in ("attention.projection",
                                                                "output.mapping"))
    assert (proj["lora_a"], proj["lora_b"]) == (((DP, MP), (1, MP)), ((DP, 1), (1, 1)))
    assert (mapping["lora_a"], mapping["lora_b"]) == (((DP, 1), (1, 1)), ((DP, 1), (MP, 1)))
    assert strategies(net, "backbone.embedding.word_embedding")["gather"] == ((MP, 1), (DP, 1))
    assert strategies(net, "backbone.embedding.position_embedding")["gather"] == ((1, 1), (1,))
    assert strategies(net, "head")["matmul"] == ((DP, 1), (MP, 1))   # tied to the split table


def test_ia3_vectors_follow_the_base_split():
    cfg = load_config(str(ROOT / "configs/llama2/ia3_llama2_tiny.yaml"),
                      PARALLEL + ["model.model_config.n_kv_heads=4"])
    net = build_model(cfg, device_target="CPU")
    assert strategies(net, "model.layers.0.attention.wk")["scale_mul"] == ((DP, 1, MP), (MP,))   # out
    assert strategies(net, "model.layers.0.feed_forward.w2")["scale_mul"] == ((DP, 1, MP), (MP,))  # in


def test_prompt_encoders_are_whole_and_on_the_first_stage():
    cfg = load_config(str(ROOT / "configs/llama2/ptuning_llama2_tiny.yaml"),
                      PARALLEL + ["model.model_config.n_kv_heads=4"])
    net = build_model(cfg, device_target="CPU")
    cells = dict(net.cells_and_names())
    encoder = [p for p in cells if p.startswith("encoder.mlp.") and hasattr(cells[p], "matmul")]
    assert encoder and all(cells[p].matmul.in_strategy == ((1, 1), (1, 1)) for p in encoder)
    assert all(stage_of(cells[p]) == 0 for p in cells if p.startswith("encoder"))
    assert stage_of(cells["pet_model.model.layers.1"]) == 1


def test_model_parallel_must_divide_the_head_counts():
    cfg = load_config(str(ROOT / "configs/llama2/lora_llama2_tiny.yaml"), PARALLEL)  # 2 kv heads
    with pytest.raises(UserError, match="model_parallel 4 does not divide the 2 key/value heads"):
        build_model(cfg, device_target="CPU")


# ------------------------------------------------------------------------- strategies fit the tensors
def record_operands(net, run):
    """Run `run()` in PyNative, recording the operand shapes each sharded primitive is called with
    (tensors and float scalars; ints such as axes and permutations are attributes, not operands)."""
    sharded = {id(p): (key, p) for key, p in primitives(net).items()
               if getattr(p, "in_strategy", None) is not None}
    seen: dict[int, set] = {}

    def operands(args):
        for a in args:
            if isinstance(a, (tuple, list)) and any(isinstance(x, Tensor) for x in a):
                yield from operands(a)
            elif isinstance(a, Tensor):
                yield tuple(a.shape)
            elif isinstance(a, float):
                yield ()

    saved = {}
    for cls in {type(p) for _, p in sharded.values()}:
        saved[cls] = cls.__dict__.get("__call__")

        def wrapper(self, *args, _call=cls.__call__, **kwargs):
            if id(self) in sharded:
                seen.setdefault(id(self), set()).add(tuple(operands(args)))
            return _call(self, *args, **kwargs)
        cls.__call__ = wrapper
    try:
        run()
    finally:
        for cls, call in saved.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call
    return sharded, seen


@pytest.mark.parametrize("family", list(MODELS))
def test_every_primitive_is_sharded_and_its_strategy_fits_the_tensors(built, family):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = built[family]
    unsharded = [k for k, p in primitives(net).items() if getattr(p, "in_strategy", None) is None]
    assert unsharded == []
    # 18 tokens: Llama and GPT-2 see 17, ChatGLM2 18 — a strategy that cut seq by mp would fail
    ids = Tensor(np.random.default_rng(0).integers(3, 500, size=(DP, 18)).astype(np.int32))
    net.set_train(True)
    sharded, seen = record_operands(net, lambda: net(ids, ids))
    cells = dict(net.cells_and_names())
    never = [key for pid, (key, _) in sharded.items() if pid not in seen
             and not (key[1] == "tile_kv" and cells[key[0]].n_rep == 1)]   # GPT-2: no GQA
    assert never == []
    for pid, calls in seen.items():
        key, prim = sharded[pid]
        strategy = prim.in_strategy
        assert max(int(np.prod(s)) for s in strategy) <= DP * MP, key
        for shapes in calls:
            assert len(shapes) == len(strategy), (key, strategy, shapes)
            for cut, shape in zip(strategy, shapes):
                assert len(cut) == len(shape) and all(d % c == 0 for d, c in zip(shape, cut)), \
                    (key, strategy, shapes)


# ------------------------------------------------------------------------- the planner agrees
@pytest.mark.parametrize("num_layers, offset", [(5, 0), (4, 1), (6, [1, -1])])
def test_planner_places_layers_like_the_models(num_layers, offset):
    from petrun.plan.estimator import model_of
    from petrun.plan.params import stages_of
    cfg = load_config(str(ROOT / "configs/llama2/lora_llama2_tiny.yaml"),
                      ["load_checkpoint=", f"model.model_config.num_layers={num_layers}"])
    _, _, specs, dims = model_of(cfg, "CPU")
    stages = stages_of(specs, dims, 2, offset)
    want = {f"model.layers.{i}.attention.wq.weight": layer_stage(i, num_layers, 2, offset)
            for i in range(num_layers)}
    assert {n: stages[n] for n in want} == want
    assert stages["model.tok_embeddings.embedding_weight"] == 0 and stages["lm_head.weight"] == 1


def test_layers_per_stage_counts_the_rule_not_an_even_split():
    assert layers_per_stage(6, 4) == [1, 1, 1, 3]          # MindFormers: int((6 + 1) / 4) = 1 each
    assert layers_per_stage(32, 2) == [16, 16]
    assert layers_per_stage(6, 2, [1, -1]) == [4, 2]
    assert layers_per_stage(3, 1) == [3]
