"""Prompt-learning methods in detail: names and shapes (MindFormers' for ptuning2), what the hooks
compute, prompt initialisation, GRAPH-mode training through petrun's TrainStep, ChatGLM2WithPtuning2,
and strict loading (a prefix of another length is an error that names pre_seq_len)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.api import build_model, load_checkpoint
from petrun.ckpt.io import save_params
from petrun.errors import UserError
from petrun.pet import apply_pet, check_model_pet, parse_pet_config
from petrun.pet.virtual import PromptLearningModel

from tests.pet.test_methods_common import build, randomize

TOKENIZER = "data/demo/tokenizer.model"


def ids(batch=2, seq=9, seed=0):
    return Tensor(np.random.default_rng(seed).integers(1, 128, (batch, seq)).astype(np.int32))


def shapes(net) -> dict:
    return {p.name: tuple(p.shape) for p in net.get_parameters() if "mindpet_delta_" in p.name}


# ---------------------------------------------------------------------------------------------
# Names, shapes, wrapping


def test_ptuning2_names_follow_mindformers():
    glm2 = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 4}).model
    # ChatGLM2WithPtuning2: L·2·kv_channels·groups = 2·2·8·2
    assert shapes(glm2) == {"prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table": (4, 64)}
    llama = apply_pet(build("llama2"), {"pet_type": "ptuning2", "pre_seq_len": 4,
                                        "prefix_projection": True, "projection_dim": 8}).model
    # GQA aware: 2 layers · 2 · n_kv_heads 2 · head_dim 8 (not num_heads 4)
    assert shapes(llama) == {"mindpet_delta_ptuning2_embedding.embedding_table": (4, 64),
                             "mindpet_delta_ptuning2_trans.0.weight": (8, 64),
                             "mindpet_delta_ptuning2_trans.0.bias": (8,),
                             "mindpet_delta_ptuning2_trans.2.weight": (64, 8),
                             "mindpet_delta_ptuning2_trans.2.bias": (64,)}


def test_prompt_learning_names(tmp_path):
    prompt = apply_pet(build("gpt2"), {"pet_type": "prompt_tuning", "num_virtual_tokens": 3}).model
    assert shapes(prompt) == {"mindpet_delta_prompt_tuning_embedding.embedding_table": (3, 32)}
    lstm = apply_pet(build("llama2"), {"pet_type": "ptuning", "num_virtual_tokens": 3,
                                       "encoder_hidden_size": 8, "encoder_num_layers": 1,
                                       "encoder_reparameterization_type": "LSTM"}).model
    assert shapes(lstm) == {
        "mindpet_delta_ptuning_embedding.embedding_table": (3, 32),
        "mindpet_delta_ptuning_lstm.weight_ih_l0": (32, 32),
        "mindpet_delta_ptuning_lstm.weight_ih_l0_reverse": (32, 32),
        "mindpet_delta_ptuning_lstm.weight_hh_l0": (32, 8),
        "mindpet_delta_ptuning_lstm.weight_hh_l0_reverse": (32, 8),
        "mindpet_delta_ptuning_lstm.bias_ih_l0": (32,),
        "mindpet_delta_ptuning_lstm.bias_ih_l0_reverse": (32,),
        "mindpet_delta_ptuning_lstm.bias_hh_l0": (32,),
        "mindpet_delta_ptuning_lstm.bias_hh_l0_reverse": (32,),
        "mindpet_delta_ptuning_mlp.0.weight": (16, 16), "mindpet_delta_ptuning_mlp.0.bias": (16,),
        "mindpet_delta_ptuning_mlp.2.weight": (32, 16), "mindpet_delta_ptuning_mlp.2.bias": (32,)}


def test_the_wrapper_keeps_base_names_and_exposes_the_prefix():
    base = build("llama2")
    names = [p.name for p in base.get_parameters()]
    report = apply_pet(base, {"pet_type": "prefixtuning", "prefix_token_num": 5, "mid_dim": 8})
    model = report.model
    assert isinstance(model, PromptLearningModel) and model.pet_model is base
    assert [p.name for p in model.get_parameters()][:len(names)] == names
    assert model.pre_seq_len == 5 and model.config is base.config
    # (L, 2, B, n_kv_heads, P, head_dim): one key/value pair per layer for the attention / caches
    assert model.virtual_inputs(3).shape == (2, 2, 3, 2, 5, 8)
    with pytest.raises(UserError, match="already applied"):
        apply_pet(base, {"pet_type": "ptuning2", "pre_seq_len": 2})
    with pytest.raises(UserError, match="already applied"):
        apply_pet(build_lora_model(), {"pet_type": "prompt_tuning", "num_virtual_tokens": 2})


def build_lora_model():
    net = build("llama2")
    apply_pet(net, {"pet_type": "lora", "target_modules": ".*wq"})
    return net


# ---------------------------------------------------------------------------------------------
# What the hooks compute


@pytest.mark.parametrize("family", ["llama2", "glm2", "gpt2"])
def test_virtual_tokens_act_exactly_like_real_tokens_with_those_embeddings(family):
    """A prompt copied from vocabulary rows v gives, for the real tokens, the logits the base
    model gives for the sequence v + tokens: same positions, same mask, no logits for v."""
    ms.set_seed(0)
    base = build(family)
    randomize(base)
    base.set_train(False)
    tokens = ids()
    model = apply_pet(base, {"pet_type": "prompt_tuning", "num_virtual_tokens": 3,
                             "prompt_tuning_init": "SAMPLE_VOCAB"}).model
    model.set_train(False)
    v = model.encoder.init_ids.astype(np.int32)
    together = Tensor(np.concatenate([np.tile(v, (2, 1)), tokens.asnumpy()], axis=1))
    want = base(together).asnumpy()[:, 3:]
    got = model(tokens).asnumpy()
    assert got.shape == (2, 9, 128)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_prefix_enters_every_layers_attention():
    ms.set_seed(0)
    base = build("glm2")
    randomize(base)
    base.set_train(False)
    before = base(ids()).asnumpy()
    model = apply_pet(base, {"pet_type": "ptuning2", "pre_seq_len": 4, "dropout_prob": 0.0}).model
    table = model.encoder.embedding.embedding_table
    table.set_data(Tensor(np.random.default_rng(1).normal(0, 1, table.shape).astype(np.float32)))
    model.set_train(False)
    after = model(ids()).asnumpy()
    assert np.abs(after - before).max() > 1e-2
    # The table's width is [layer 0 keys | layer 0 values | layer 1 keys | ...], heads outer.
    x = model.virtual_inputs(2).asnumpy()
    assert x.shape == (2, 2, 2, 2, 4, 8)
    flat = table.asnumpy().reshape(4, 2 * 2, 2, 8)            # [P, 2L, n_kv, D]
    np.testing.assert_array_equal(x[1, 0, 1], flat[:, 2].transpose(1, 0, 2))   # layer 1 keys
    np.testing.assert_array_equal(x[1, 1, 0], flat[:, 3].transpose(1, 0, 2))   # layer 1 values


# ---------------------------------------------------------------------------------------------
# Prompt initialisation


def test_text_init_uses_the_tokenized_text_repeated():
    from petrun.data.tokenizer import SentencePieceTokenizer
    from petrun.models.configs import LlamaConfig
    from petrun.models.llama import LlamaForCausalLM

    with pytest.raises(UserError, match="beyond the model's vocabulary of 128"):
        apply_pet(build("llama2"), {"pet_type": "prompt_tuning", "prompt_tuning_init": "TEXT",
                                    "prompt_tuning_init_text": "Hello world, how are you",
                                    "tokenizer_name_or_path": TOKENIZER})
    base = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=4,
                                        seq_length=16, multiple_of=16, compute_dtype="float32",
                                        param_init_type="float32"))
    cfg = {"pet_type": "prompt_tuning", "num_virtual_tokens": 7, "prompt_tuning_init": "TEXT",
           "prompt_tuning_init_text": "Hello", "tokenizer_name_or_path": TOKENIZER}
    model = apply_pet(base, cfg).model
    text_ids = SentencePieceTokenizer(TOKENIZER).encode("Hello", add_bos=True)
    want = (text_ids * 7)[:7]
    table = base.model.tok_embeddings.embedding_weight.asnumpy()
    np.testing.assert_array_equal(model.encoder.embedding.embedding_table.asnumpy(), table[want])


def test_vocabulary_init_follows_the_base_checkpoint(tmp_path):
    """apply_pet runs before the base weights load; the prompt is re-drawn from the loaded
    embeddings — unless the same load brings the prompt itself."""
    ms.set_seed(0)
    donor = build("llama2")
    randomize(donor, seed=5)
    save_params(list(donor.get_parameters()), tmp_path / "base.ckpt")
    cfg = {"pet_type": "prompt_tuning", "num_virtual_tokens": 4, "prompt_tuning_init": "SAMPLE_VOCAB"}
    model = apply_pet(build("llama2"), cfg).model
    load_checkpoint(model, tmp_path / "base.ckpt")
    rows = donor.model.tok_embeddings.embedding_weight.asnumpy()[model.encoder.init_ids]
    table = model.encoder.embedding.embedding_table
    np.testing.assert_array_equal(table.asnumpy(), rows)
    table.set_data(Tensor(np.full(table.shape, 0.5, np.float32)))
    save_params(list(model.get_parameters()), tmp_path / "full.ckpt")   # base + prompt
    load_checkpoint(model, tmp_path / "full.ckpt")
    assert np.all(table.asnumpy() == 0.5)


# ---------------------------------------------------------------------------------------------
# GRAPH mode through the recipe's TrainStep


@pytest.mark.parametrize("family, cfg", [
    ("glm2", {"pet_type": "ptuning2", "pre_seq_len": 4, "dropout_prob": 0.1}),
    ("llama2", {"pet_type": "prompt_tuning", "num_virtual_tokens": 4}),
], ids=["ptuning2-glm2", "prompt_tuning-llama2"])
def test_trains_in_graph_mode_with_petruns_train_step(graph_mode, family, cfg):
    from petrun.train.optim import build_optimizer
    from petrun.train.step import TrainStep

    ms.set_seed(0)
    base = build(family)
    randomize(base)
    model = apply_pet(base, cfg).model
    n = 16 if family == "glm2" else 17
    batch = Tensor(np.random.default_rng(0).integers(1, 128, (2, n)).astype(np.int32))
    optimizer = build_optimizer(list(model.trainable_params()), {}, np.full(8, 2e-2, np.float32))
    step = TrainStep(model, optimizer, use_clip=False)
    step.set_train(True)
    losses = [float(step(batch, batch)[0].asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0] - 1e-3, losses


# ---------------------------------------------------------------------------------------------
# ChatGLM2WithPtuning2 and strict loading


def _glm2_yaml(tmp_path, arch, pet_config, **model):
    import yaml

    from tests.ckpt.test_peft_format import GLM2
    mc = {**GLM2, **model}
    if pet_config is not None:
        mc["pet_config"] = pet_config
    path = tmp_path / f"{arch}.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": {"type": arch}, "model_config": mc}}))
    return path


def test_chatglm2_with_ptuning2_is_chatglm2_plus_ptuning2(tmp_path):
    pet = {"pet_type": "ptuning2", "pre_seq_len": 4, "dropout_prob": 0.0}
    ms.set_seed(0)
    a = build_model(str(_glm2_yaml(tmp_path, "ChatGLM2WithPtuning2", pet, pre_seq_len=4)),
                    device_target="CPU")
    ms.set_seed(0)
    b = build_model(str(_glm2_yaml(tmp_path, "ChatGLM2ForConditionalGeneration", pet)),
                    device_target="CPU")
    assert [(p.name, p.shape) for p in a.get_parameters()] == \
           [(p.name, p.shape) for p in b.get_parameters()]
    a.set_train(False)
    b.set_train(False)
    np.testing.assert_array_equal(a(ids()).asnumpy(), b(ids()).asnumpy())


def test_chatglm2_with_ptuning2_needs_a_matching_ptuning2(tmp_path):
    with pytest.raises(UserError, match="ChatGLM2 with P-Tuning v2") as e:
        build_model(str(_glm2_yaml(tmp_path, "ChatGLM2WithPtuning2", None)), device_target="CPU")
    assert "pet_type: ptuning2" in e.value.fix
    with pytest.raises(UserError, match="'lora'"):
        check_model_pet("ChatGLM2WithPtuning2", {}, {"pet_type": "lora"})
    with pytest.raises(UserError, match="pre_seq_len is 8 but pet_config.pre_seq_len is 4") as e:
        check_model_pet("ChatGLM2WithPtuning2", {"pre_seq_len": 8},
                        {"pet_type": "ptuning2", "pre_seq_len": 4})
    assert e.value.key == "model.model_config.pre_seq_len"


def test_loading_a_prefix_of_another_length_names_pre_seq_len(tmp_path):
    short = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 4}).model
    save_params([p for p in short.get_parameters() if "mindpet_delta_" in p.name],
                tmp_path / "adapter.ckpt")
    longer = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 6}).model
    with pytest.raises(UserError) as e:
        load_checkpoint(longer, tmp_path / "adapter.ckpt")
    assert e.value.key == "model.model_config.pet_config.pre_seq_len"
    assert "4 virtual tokens" in e.value.message and "pre_seq_len: 4" in e.value.fix
    # With the MLP the file lacks trans.*: missing tensors, never a silent re-initialisation.
    projected = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 4,
                                          "prefix_projection": True, "projection_dim": 8}).model
    with pytest.raises(UserError, match="not in the checkpoint"):
        load_checkpoint(projected, tmp_path / "adapter.ckpt")


def test_a_full_checkpoint_with_part_of_the_adapter_is_an_error(tmp_path):
    """Base + prefix table without the MLP: the MLP must not silently keep its random init."""
    plain = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 4}).model
    save_params(list(plain.get_parameters()), tmp_path / "full.ckpt")
    projected = apply_pet(build("glm2"), {"pet_type": "ptuning2", "pre_seq_len": 4,
                                          "prefix_projection": True, "projection_dim": 8}).model
    with pytest.raises(UserError, match="1 of the model's 5 adapter tensors"):
        load_checkpoint(projected, tmp_path / "full.ckpt")


def test_gpt2_prompt_must_fit_the_learned_positions():
    with pytest.raises(UserError, match="learned positions") as e:
        apply_pet(build("gpt2"), {"pet_type": "prompt_tuning", "num_virtual_tokens": 9})
    assert e.value.key == "model.model_config.pet_config.num_virtual_tokens"


@pytest.mark.parametrize("cfg, key", [
    ({"pet_type": "prompt_tuning", "num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"pet_type": "prompt_tuning", "prompt_tuning_init": "WORDS"}, "prompt_tuning_init"),
    ({"pet_type": "prompt_tuning", "prompt_tuning_init": "TEXT",
      "tokenizer_name_or_path": TOKENIZER}, "prompt_tuning_init_text"),
    ({"pet_type": "ptuning", "encoder_reparameterization_type": "GRU"},
     "encoder_reparameterization_type"),
    ({"pet_type": "ptuning", "encoder_hidden_size": -1}, "encoder_hidden_size"),
    ({"pet_type": "ia3"}, "target_modules"),
    ({"pet_type": "adapter", "target_modules": ".*wo", "non_linearity": "swish"}, "non_linearity"),
    ({"pet_type": "adapter", "target_modules": ".*wo", "bottleneck_size": 0}, "bottleneck_size"),
    ({"pet_type": "ptuning2", "pre_seq_len": True}, "pre_seq_len"),
])
def test_impossible_values_name_their_key(cfg, key):
    with pytest.raises(UserError) as e:
        parse_pet_config(cfg)
    assert e.value.key == f"model.model_config.pet_config.{key}"


def test_ia3_feedforward_must_be_a_subset_of_the_targets():
    with pytest.raises(UserError, match="'.*w1'") as e:
        apply_pet(build("llama2"), {"pet_type": "ia3", "target_modules": ".*wk|.*w2",
                                    "feedforward_modules": ".*w2|.*w1"})
    assert e.value.key.endswith("feedforward_modules")


# ---------------------------------------------------------------------------------------------
# Incremental inference (petrun.infer): the prefix is the cache's first slots


@pytest.mark.parametrize("family, jit", [("glm2", True), ("llama2", False), ("gpt2", False)])
def test_generation_with_a_prefix_matches_full_forward_greedy(family, jit):
    from petrun.infer.generate import GenerationConfig, generate

    ms.set_seed(0)
    base = build(family)
    randomize(base)
    model = apply_pet(base, {"pet_type": "ptuning2", "pre_seq_len": 3, "dropout_prob": 0.0}).model
    table = model.encoder.embedding.embedding_table
    table.set_data(Tensor(np.random.default_rng(1).normal(0, 1, table.shape).astype(np.float32)))
    prompt = [5, 9, 17, 33]
    got = generate(model, [prompt], GenerationConfig(max_new_tokens=4, jit=jit)).tokens[0]
    model.set_train(False)
    ids = list(prompt)
    for _ in range(4):
        ids.append(int(model(Tensor(np.array([ids], np.int32))).asnumpy()[0, -1].argmax()))
    assert list(got) == ids[len(prompt):]
    x = Tensor(np.array([ids], np.int32))
    base.set_train(False)
    assert np.abs(base(x).asnumpy() - model(x).asnumpy()).max() > 1e-2, "the prefix must matter"


def test_generation_with_prompt_tuning_is_refused_clearly():
    from petrun.infer.generate import GenerationConfig, generate

    model = apply_pet(build("llama2"), {"pet_type": "prompt_tuning", "num_virtual_tokens": 2}).model
    with pytest.raises(UserError, match="not built yet"):
        generate(model, [[5, 6]], GenerationConfig(max_new_tokens=2, jit=False))
