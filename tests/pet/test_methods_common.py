"""The same checks over every PET method × model family (HF PEFT's shared-mixin idea).

For each case a tiny model (hidden 32, 2 layers) gets the method, trains a few steps on a fixed
batch, and is then checked: the trainable count equals the method's formula, only adapter
parameters train and change (the base stays bit-identical), the loss falls, an adapter-only save
→ load into a fresh model gives identical logits, and — for LoRA and IA3 — merging equals the
unmerged model (≤1e-5), is idempotent and unmerges back. One module-scoped fixture trains each case
once; the tests read its results.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from petrun.api import load_checkpoint
from petrun.ckpt.io import save_params
from petrun.errors import UserError
from petrun.models.configs import ChatGLM2Config, GPT2Config, LlamaConfig
from petrun.pet import apply_pet
from petrun.pet import merge as pet_merge
from tests.pet.pet_helpers import cpu_device

VOCAB, SEQ, BATCH = 128, 16, 2
P = 4   # virtual tokens / prefix length

# Per family: its config, and the layers each layer method targets.
FAMILIES = {
    "llama2": dict(lora=".*wq|.*wv|.*w2", ia3=(".*wk|.*wv|.*w2", ".*w2"), adapter=".*wo|.*w2"),
    "glm2": dict(lora=".*query_key_value|.*dense_4h_to_h",
                 ia3=(".*query_key_value|.*dense_4h_to_h", ".*dense_4h_to_h"),
                 adapter=".*dense$|.*dense_4h_to_h"),
    # GPT-2: LoRA and IA3 also on its [in, out] layers (output.mapping, *.projection)
    "gpt2": dict(lora=".*dense1|.*dense3|.*mapping",
                 ia3=(".*dense1|.*dense3|.*projection", ".*projection"), adapter=".*projection"),
}


def build(family: str):
    if family == "llama2":
        from petrun.models.llama import LlamaForCausalLM
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2,
            seq_length=SEQ, multiple_of=16, compute_dtype="float32", param_init_type="float32"))
    if family == "glm2":
        from petrun.models.glm2 import ChatGLM2ForConditionalGeneration
        return ChatGLM2ForConditionalGeneration(ChatGLM2Config(
            num_layers=2, padded_vocab_size=VOCAB, hidden_size=32, ffn_hidden_size=64,
            kv_channels=8, num_attention_heads=4, multi_query_group_num=2, seq_length=SEQ,
            compute_dtype="float32", param_init_type="float32"))
    from petrun.models.gpt2 import GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, seq_length=SEQ,
        max_position_embeddings=SEQ + P, compute_dtype="float32", param_init_type="float32",
        embedding_dropout_prob=0.0, hidden_dropout_rate=0.0, attention_dropout_rate=0.0))


def pet_config(method: str, family: str) -> dict:
    t = FAMILIES[family]
    return {
        "lora": {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                 "target_modules": t["lora"]},
        # MindFormers' GLM2 default is without projection; Llama2's with.
        "ptuning2": {"pet_type": "ptuning2", "pre_seq_len": P, "dropout_prob": 0.0,
                     "prefix_projection": family != "glm2", "projection_dim": 8},
        "prefixtuning": {"pet_type": "prefixtuning", "prefix_token_num": P, "mid_dim": 8,
                         "dropout_rate": 0.0},
        "prompt_tuning": {"pet_type": "prompt_tuning", "num_virtual_tokens": P,
                          "prompt_tuning_init": "SAMPLE_VOCAB" if family == "gpt2" else "RANDOM"},
        "ptuning": {"pet_type": "ptuning", "num_virtual_tokens": P, "encoder_hidden_size": 8,
                    "encoder_reparameterization_type": "LSTM" if family == "gpt2" else "MLP"},
        "ia3": {"pet_type": "ia3", "target_modules": t["ia3"][0],
                "feedforward_modules": t["ia3"][1]},
        "adapter": {"pet_type": "adapter", "target_modules": t["adapter"], "bottleneck_size": 4},
    }[method]


METHODS = ("lora", "ptuning2", "prefixtuning", "prompt_tuning", "ptuning", "ia3", "adapter")
CASES = [(m, f) for m in METHODS for f in FAMILIES]


# ---------------------------------------------------------------------------------------------
# The formulas, written out independently of the code that builds the parameters


def dims(family: str) -> dict:
    """layers, key/value heads, head_dim, hidden of the tiny models above."""
    return {"llama2": (2, 2, 8, 32), "glm2": (2, 2, 8, 32), "gpt2": (2, 4, 8, 32)}[family]


def in_out(base: dict, layer: str) -> tuple[int, int]:
    w = base[f"{layer}.weight"].shape
    # GPT-2's attention.projection / output.* store [in, out]; every other linear [out, in].
    return (w[0], w[1]) if layer.endswith(("projection", "mapping")) else (w[1], w[0])


def expected_count(method: str, family: str, cfg: dict, targets: list, base: dict) -> int:
    layers, kv, head_dim, hidden = dims(family)
    width = 2 * layers * kv * head_dim
    if method == "lora":
        return sum(cfg["lora_rank"] * sum(in_out(base, t)) for t in targets)
    if method == "ia3":
        import re
        ff = re.compile(cfg["feedforward_modules"])
        return sum(in_out(base, t)[0] if ff.match(t.rsplit(".", 1)[1]) else in_out(base, t)[1]
                   for t in targets)
    if method == "adapter":
        b = cfg["bottleneck_size"]
        return sum(2 * b * in_out(base, t)[1] + b + in_out(base, t)[1] for t in targets)
    if method == "ptuning2":
        m = cfg["projection_dim"]
        return P * width + ((2 * width * m + m + width) if cfg["prefix_projection"] else 0)
    if method == "prefixtuning":
        m = cfg["mid_dim"]
        return P * width + 2 * width * m + m + width
    if method == "prompt_tuning":
        return P * hidden
    e = cfg["encoder_hidden_size"]
    if cfg["encoder_reparameterization_type"] == "MLP":
        return P * hidden + (hidden * e + e) + (e * e + e) + (e * hidden + hidden)
    lstm = 2 * (4 * e * hidden + 4 * e * e + 8 * e) + 2 * (4 * e * 2 * e + 4 * e * e + 8 * e)
    return P * hidden + lstm + (2 * e * 2 * e + 2 * e) + (2 * e * hidden + hidden)


# ---------------------------------------------------------------------------------------------
# One training run per case


def batch(family: str):
    # GLM2 data arrives shifted (seq_length long); Llama2/GPT2 rows are seq_length + 1.
    n = SEQ if family == "glm2" else SEQ + 1
    ids = np.random.default_rng(0).integers(1, VOCAB, (BATCH, n)).astype(np.int32)
    return Tensor(ids), Tensor(ids[:, :SEQ])


def randomize(net, seed: int = 0, scale: float = 0.15) -> None:
    """Base weights far from the near-uniform default init, so every method moves the loss."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        value = rng.normal(0.0, scale, p.shape)
        if len(p.shape) == 1 and not p.name.endswith("bias"):
            value += 1.0   # norm scales near 1
        p.set_data(Tensor(value.astype(np.float32)))


def snapshot(net) -> dict:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def logits(net, ids):
    net.set_train(False)
    return net(ids).asnumpy()


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{f}" for m, f in CASES])
def run(request, tmp_path_factory):
    method, family = request.param
    cpu_device()   # module-scoped: runs before the function-scoped conftest fixture
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    cfg = pet_config(method, family)
    net = build(family)
    randomize(net)
    base_names = {p.name for p in net.get_parameters()}
    report = apply_pet(net, cfg)
    model = report.model
    out = {"method": method, "family": family, "cfg": cfg, "report": report, "model": model,
           "base_names": base_names, "before": snapshot(model)}
    train_ids, eval_ids = batch(family)
    params = list(model.trainable_params())
    # Adam's first step moves every parameter by about lr: smaller for the deep P-tuning encoder.
    optimizer = nn.Adam(params, learning_rate=1e-3 if method == "ptuning" else 0.05)
    grad_fn = ms.value_and_grad(lambda i, l: model(i, l), None, optimizer.parameters)
    model.set_train(True)
    loss, grads = grad_fn(train_ids, train_ids)   # PyNative backward is the slow part: one step
    optimizer(grads)
    out["losses"] = [float(loss.asnumpy()), float(model(train_ids, train_ids).asnumpy())]
    out["after"] = snapshot(model)
    out["logits"] = logits(model, eval_ids)
    out["eval_ids"] = eval_ids

    # Adapter-only save → a fresh model (other random adapter) → base, then adapter loaded.
    tmp = tmp_path_factory.mktemp(f"{method}-{family}")
    save_params([p for p in model.get_parameters() if "mindpet_delta_" in p.name],
                tmp / "adapter.ckpt")
    save_params([p for p in model.get_parameters() if "mindpet_delta_" not in p.name],
                tmp / "base.ckpt")
    ms.set_seed(123)
    fresh = apply_pet(build(family), cfg).model
    out["fresh_base"] = load_checkpoint(fresh, tmp / "base.ckpt")
    out["fresh_adapter"] = {p.name: p.asnumpy().copy() for p in fresh.get_parameters()
                            if "mindpet_delta_" in p.name}
    out["adapter_load"] = load_checkpoint(fresh, tmp / "adapter.ckpt")
    out["reloaded_logits"] = logits(fresh, eval_ids)

    if method in pet_merge.MERGEABLE:
        weights = {n for n in base_names if n.endswith((".weight", ".bias"))}
        before = {n: a for n, a in snapshot(model).items() if n in weights}
        out["merged_count"] = pet_merge.merge(model)
        out["merged_logits"] = logits(model, eval_ids)
        merged = {n: a for n, a in snapshot(model).items() if n in weights}
        out["merge_again"] = pet_merge.merge(model)
        out["merged_twice"] = {n: a for n, a in snapshot(model).items() if n in weights}
        pet_merge.unmerge(model)
        out["unmerged_weights"] = {n: a for n, a in snapshot(model).items() if n in weights}
        out["unmerged_logits"] = logits(model, eval_ids)
        out["weights_before_merge"], out["merged_weights"] = before, merged
    return out


# ---------------------------------------------------------------------------------------------
# The checks


def test_trainable_count_matches_the_formula(run):
    report, cfg = run["report"], run["cfg"]
    want = expected_count(run["method"], run["family"], cfg, report.targets, run["before"])
    assert report.trainable == want
    assert report.trainable == sum(int(p.size) for p in run["model"].trainable_params())
    assert report.total == sum(int(a.size) for a in run["before"].values())


def test_only_adapter_parameters_train(run):
    model, method = run["model"], run["method"]
    trainable = [p.name for p in model.trainable_params()]
    assert trainable
    assert all(f"mindpet_delta_{method}" in n for n in trainable), trainable
    # Base names are unchanged by the method (prompt methods wrap with auto_prefix=False).
    assert run["base_names"] <= set(run["before"])
    added = set(run["before"]) - run["base_names"]
    assert added == set(trainable)


def test_loss_falls(run):
    losses = run["losses"]
    assert losses[1] < losses[0] - 1e-3, losses


def test_only_adapter_parameters_change(run):
    before, after = run["before"], run["after"]
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    for name in run["base_names"]:
        assert np.array_equal(before[name], after[name]), f"base parameter {name} changed"
    assert changed, "training changed nothing"
    assert changed <= set(before) - run["base_names"]


def test_adapter_save_load_round_trip_gives_identical_logits(run):
    assert run["fresh_base"]["kind"] == "full"
    assert not any("mindpet_delta_" in n for n in run["fresh_base"]["loaded"])
    result = run["adapter_load"]
    assert result["kind"] == "adapter" and not result["missing"]
    trained = {n: a for n, a in run["after"].items() if n in run["fresh_adapter"]}
    assert set(trained) == set(run["fresh_adapter"])
    assert any(not np.array_equal(a, run["fresh_adapter"][n]) for n, a in trained.items()), \
        "the fresh model's adapter should differ, or the round trip proves nothing"
    np.testing.assert_array_equal(run["reloaded_logits"], run["logits"])


def test_merge_equals_unmerged_and_is_idempotent(run):
    if run["method"] not in pet_merge.MERGEABLE:
        with pytest.raises(UserError, match="cannot be merged"):
            pet_merge.merge(run["model"])
        return
    assert run["merged_count"] > 0 and run["merge_again"] == 0
    assert np.abs(run["merged_logits"] - run["logits"]).max() <= 1e-5
    changed = [n for n in run["merged_weights"]
               if not np.array_equal(run["merged_weights"][n], run["weights_before_merge"][n])]
    assert changed, "merging changed no base weight"
    for n, a in run["merged_twice"].items():
        np.testing.assert_array_equal(a, run["merged_weights"][n])
    for n, a in run["unmerged_weights"].items():
        np.testing.assert_allclose(a, run["weights_before_merge"][n], atol=1e-6)
    assert np.abs(run["unmerged_logits"] - run["logits"]).max() <= 1e-5
