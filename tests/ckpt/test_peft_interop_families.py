"""HF PEFT interop where the layouts differ: GPT-2 (petrun's separate dense1..3 ↔ HF's fused Conv1D
c_attn) and ChatGLM2 (petrun's fused query_key_value ↔ transformers Glm's q/k/v_proj). Every
method petrun exports loads in PEFT with petrun's logits (LoRA — on GPT-2's [in, out] Conv1D
layers too, and merged it equals PEFT's merge in transformers —, IA3, prompt tuning, P-tuning; GLM2
also P-Tuning v2 and prefix tuning); GPT-2's prefix methods are refused both ways (learned
positions); PEFT adapters of each kind import with PEFT's logits.
Needs the parity extra (torch, transformers, peft)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from petrun.api import build_model, load_checkpoint  # noqa: E402
from petrun.ckpt import hf  # noqa: E402
from petrun.ckpt.io import save_params  # noqa: E402
from petrun.ckpt.peft_format import export_peft, import_peft  # noqa: E402
from petrun.errors import UserError  # noqa: E402
from tests.ckpt.test_peft_interop import peft_logits, perturb  # noqa: E402
from tests.pet.pet_helpers import cpu_device  # noqa: E402
from tests.models import parity_helpers as ph  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, HIDDEN, LAYERS, HEADS, SEQ, P = 97, 32, 2, 4, 16, 5
GPT2_CONFIG = {"type": "GPT2Config", "vocab_size": VOCAB, "hidden_size": HIDDEN,
               "num_layers": LAYERS, "num_heads": HEADS, "seq_length": SEQ,
               "max_position_embeddings": SEQ + P,   # room for virtual tokens
               "compute_dtype": "float32", "param_init_type": "float32", "hidden_act": "gelu",
               "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1,
               "embedding_dropout_prob": 0.0, "hidden_dropout_rate": 0.0,
               "attention_dropout_rate": 0.0}
GLM2_CONFIG = {"type": "ChatGLM2Config", "padded_vocab_size": VOCAB, "hidden_size": HIDDEN,
               "num_layers": LAYERS, "num_attention_heads": HEADS, "multi_query_group_num": 2,
               "kv_channels": 8, "ffn_hidden_size": 40, "seq_length": SEQ, "rope_ratio": 0.05,
               "layernorm_epsilon": 1e-5, "compute_dtype": "float32", "param_init_type": "float32"}
IDS = ph.random_ids(VOCAB, 2, 12, seed=7)


@pytest.fixture(autouse=True)
def pynative():
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                  n_positions=SEQ + P, activation_function="gelu_new",
                                  layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def _glm2():
    cfg = transformers.GlmConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=40, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=8, partial_rotary_factor=0.5,
        attention_bias=True, rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=SEQ,
        tie_word_embeddings=False, pad_token_id=0, attn_implementation="eager")
    return transformers.GlmForCausalLM(cfg)


FAMILIES = {"gpt2": (_gpt2, "GPT2LMHeadModel", GPT2_CONFIG),
            "glm2": (_glm2, "ChatGLM2ForConditionalGeneration", GLM2_CONFIG)}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    out = {}
    for family, (make, _, _) in FAMILIES.items():
        if family == "glm2" and not hasattr(transformers, "GlmForCausalLM"):
            continue
        tmp = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        model = make().eval()
        ph.randomize_torch(model, seed=4)
        ph.save_hf(model, tmp / "hf")
        hf.convert_hf_to_ms(family, tmp / "hf", tmp / "base.ckpt")
        out[family] = tmp
    return out


def _hf(family, folder):
    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.GlmForCausalLM
    return cls.from_pretrained(str(folder / "hf"), attn_implementation="eager").eval()


def _petrun(family, tmp, pet_config, base, adapter=None):
    _, arch, model_config = FAMILIES[family]
    yaml_path = ph.write_petrun_yaml(tmp / "pet.yaml", arch, {**model_config,
                                                               "pet_config": pet_config})
    net = build_model(str(yaml_path), device_target="CPU")
    load_checkpoint(net, base / "base.ckpt")
    if adapter is not None:
        load_checkpoint(net, adapter)
    net.set_train(False)
    return yaml_path, net


PROMPT = {"pet_type": "prompt_tuning", "num_virtual_tokens": P}
PTUNING = {"pet_type": "ptuning", "num_virtual_tokens": P, "encoder_reparameterization_type": "MLP",
           "encoder_hidden_size": 24, "encoder_dropout": 0.0}
PTUNING2 = {"pet_type": "ptuning2", "pre_seq_len": P, "prefix_projection": False,
            "dropout_prob": 0.0}
PTUNING2_MLP = {**PTUNING2, "prefix_projection": True, "projection_dim": 24}
PREFIX = {"pet_type": "prefixtuning", "prefix_token_num": P, "mid_dim": 24, "dropout_rate": 0.0}
GPT2_LORA_ALL = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                 "target_modules": ".*dense1|.*dense2|.*dense3|.*projection|.*mapping"}
CASES = [
    # GPT-2: two of three thirds of c_attn adapted → a block-diagonal rank-8 c_attn LoRA.
    ("gpt2", {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
              "target_modules": ".*dense1|.*dense3"}),
    ("gpt2", {"pet_type": "ia3", "target_modules": ".*dense2|.*projection|.*mapping",
              "feedforward_modules": ".*projection"}),
    # GPT-2 LoRA on every layer, the [in, out] ones too (c_proj, c_fc: fan_in_fan_out)
    ("gpt2", GPT2_LORA_ALL),
    # ChatGLM2: the fused query_key_value LoRA → q/k/v_proj sharing lora_A.
    ("glm2", {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 16, "lora_dropout": 0.0,
              "target_modules": ".*query_key_value|.*dense_4h_to_h"}),
    ("glm2", {"pet_type": "ia3", "target_modules": ".*query_key_value|.*dense_4h_to_h",
              "feedforward_modules": ".*dense_4h_to_h"}),
    ("gpt2", PROMPT), ("gpt2", PTUNING), ("glm2", PROMPT), ("glm2", PTUNING),
    ("glm2", PTUNING2), ("glm2", PTUNING2_MLP), ("glm2", PREFIX),
]


@pytest.mark.parametrize("family, pet_config", CASES,
                         ids=[f"{f}-{c['pet_type']}{'-projection' * bool(c.get('prefix_projection'))}"
                              f"{'-all' * (c is GPT2_LORA_ALL)}" for f, c in CASES])
def test_exported_adapter_gives_petruns_logits_in_peft(bases, tmp_path, family, pet_config):
    if family not in bases:
        pytest.skip("this transformers has no GlmForCausalLM")
    yaml_path, net = _petrun(family, tmp_path, pet_config, bases[family])
    perturb(net, seed=2)
    want = net(Tensor(IDS)).asnumpy()
    save_params([p for p in net.get_parameters() if "mindpet_delta_" in p.name],
                tmp_path / "adapter.ckpt")
    export_peft(yaml_path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(_hf(family, bases[family]), str(tmp_path / "peft"))
    base_logits = ph.hf_logits(_hf(family, bases[family]), IDS)
    got = peft_logits(loaded.eval(), IDS)
    assert np.abs(got - base_logits).max() > 0.1, "the adapter must change the logits"
    err = np.abs(got - want).max()
    assert err <= ph.TOL, f"max |PEFT - petrun| = {err:.3g}"


def test_lora_merged_gpt2_equals_peft_merge_in_transformers(bases, tmp_path):
    """LoRA on every GPT-2 layer, [in, out] ones included, merged by `petrun ckpt merge` and
    converted back to transformers' layout: transformers' GPT2LMHeadModel gives the logits of
    PEFT's own merge_and_unload of the exported adapter (and petrun's unmerged logits), and the
    merged Conv1D weights equal PEFT's."""
    from petrun.ckpt.merge import merge_checkpoint

    base = bases["gpt2"]
    yaml_path, net = _petrun("gpt2", tmp_path, GPT2_LORA_ALL, base)
    perturb(net, seed=5)
    unmerged = net(Tensor(IDS)).asnumpy()
    save_params([p for p in net.get_parameters() if "mindpet_delta_" in p.name],
                tmp_path / "adapter.ckpt")
    merge_checkpoint(yaml_path, base / "base.ckpt", tmp_path / "adapter.ckpt",
                     tmp_path / "merged.ckpt")
    plain = ph.write_petrun_yaml(tmp_path / "plain.yaml", "GPT2LMHeadModel", GPT2_CONFIG)
    hf.convert_ms_to_hf("gpt2", tmp_path / "merged.ckpt", tmp_path / "merged_hf", plain)
    ours = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "merged_hf"),
                                                        attn_implementation="eager").eval()
    export_peft(yaml_path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(_hf("gpt2", base), str(tmp_path / "peft"))
    theirs = theirs.merge_and_unload().eval()
    got, want = ph.hf_logits(ours, IDS), ph.hf_logits(theirs, IDS)
    assert np.abs(want - ph.hf_logits(_hf("gpt2", base), IDS)).max() > 0.1
    assert np.abs(got - want).max() <= ph.TOL, np.abs(got - want).max()
    assert np.abs(got - unmerged).max() <= ph.TOL, np.abs(got - unmerged).max()
    mine, peft_sd = ours.state_dict(), theirs.state_dict()
    for name in ("transformer.h.1.mlp.c_fc.weight", "transformer.h.0.attn.c_proj.weight",
                 "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight"):
        np.testing.assert_allclose(mine[name].numpy(), peft_sd[name].numpy(), atol=1e-5)


def test_peft_gpt2_c_attn_lora_imports_exactly(bases, tmp_path):
    model = peft.get_peft_model(_hf("gpt2", bases["gpt2"]), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
        task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    want = peft_logits(model, IDS)
    model.save_pretrained(str(tmp_path / "peft"))
    pet = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
           "target_modules": ".*dense1|.*dense2|.*dense3"}
    yaml_path, _ = _petrun("gpt2", tmp_path, pet, bases["gpt2"])
    import_peft(yaml_path, tmp_path / "peft", tmp_path / "imported.ckpt")
    _, net = _petrun("gpt2", tmp_path, pet, bases["gpt2"], tmp_path / "imported.ckpt")
    err = np.abs(net(Tensor(IDS)).asnumpy() - want).max()
    assert err <= ph.TOL, f"max |petrun - PEFT| = {err:.3g}"
    # Adapting only q and v in petrun cannot hold PEFT's key third: an error, not a silent drop.
    narrow = {**pet, "target_modules": ".*dense1|.*dense3"}
    yaml_path, _ = _petrun("gpt2", tmp_path, narrow, bases["gpt2"])
    with pytest.raises(UserError):
        import_peft(yaml_path, tmp_path / "peft", tmp_path / "narrow.ckpt")


@pytest.mark.parametrize("pet_config", [PTUNING2, PTUNING2_MLP, PREFIX],
                         ids=["ptuning2", "ptuning2-projection", "prefixtuning"])
def test_gpt2_prefix_export_is_refused_with_the_reason(bases, tmp_path, pet_config):
    yaml_path, net = _petrun("gpt2", tmp_path, pet_config, bases["gpt2"])
    save_params([p for p in net.get_parameters() if "mindpet_delta_" in p.name],
                tmp_path / "adapter.ckpt")
    with pytest.raises(UserError, match="learned positions") as e:
        export_peft(yaml_path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    assert e.value.fix and not (tmp_path / "peft").exists()


def _trained_peft(family, base, config, seed):
    model = peft.get_peft_model(_hf(family, base), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:   # exactly the adapter's parameters
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


IMPORTS = [
    # GLM2: PEFT adapts q_proj alone (k/v rows of the fused LoRA stay 0), o_proj and gate_up_proj.
    ("glm2", lambda: peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                     target_modules=["q_proj", "o_proj", "gate_up_proj"]),
     {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
      "target_modules": ".*query_key_value|dense$|.*dense_h_to_4h"}),
    ("glm2", lambda: peft.IA3Config(target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                                    feedforward_modules=["down_proj"], task_type="CAUSAL_LM"),
     {"pet_type": "ia3", "target_modules": ".*query_key_value|.*dense_4h_to_h",
      "feedforward_modules": ".*dense_4h_to_h"}),
    ("gpt2", lambda: peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, fan_in_fan_out=True,
                                     target_modules=["c_attn", "c_proj", "c_fc"],
                                     task_type="CAUSAL_LM"), GPT2_LORA_ALL),
    ("gpt2", lambda: peft.IA3Config(target_modules=["c_attn", "c_proj", "c_fc"],
                                    feedforward_modules=["c_proj"], fan_in_fan_out=True,
                                    task_type="CAUSAL_LM"),
     {"pet_type": "ia3", "target_modules": ".*dense1|.*dense2|.*dense3|.*projection|.*mapping",
      "feedforward_modules": ".*projection"}),   # both c_proj: petrun matches by own name
    ("glm2", lambda: peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"),
     PTUNING2),
    ("glm2", lambda: peft.PromptEncoderConfig(num_virtual_tokens=P, encoder_hidden_size=24,
                                              task_type="CAUSAL_LM"), PROMPT),
    ("gpt2", lambda: peft.PromptTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"),
     PROMPT),
    ("glm2", lambda: peft.PromptTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"),
     PROMPT),
    ("gpt2", lambda: peft.PromptEncoderConfig(num_virtual_tokens=P, encoder_hidden_size=24,
                                              task_type="CAUSAL_LM"), PROMPT),
]


@pytest.mark.parametrize("family, make, pet_config", IMPORTS,
                         ids=["glm2-lora", "glm2-ia3", "gpt2-lora", "gpt2-ia3", "glm2-prefix", "glm2-ptuning",
                              "gpt2-prompt_tuning", "glm2-prompt_tuning", "gpt2-ptuning"])
def test_peft_adapter_imports_with_peft_logits(bases, tmp_path, family, make, pet_config):
    if family not in bases:
        pytest.skip("this transformers has no GlmForCausalLM")
    model = _trained_peft(family, bases[family], make(), seed=6)
    want = peft_logits(model, IDS)
    assert np.abs(want - ph.hf_logits(_hf(family, bases[family]), IDS)).max() > 0.1
    model.save_pretrained(str(tmp_path / "peft"))
    yaml_path, _ = _petrun(family, tmp_path, pet_config, bases[family])
    import_peft(yaml_path, tmp_path / "peft", tmp_path / "imported.ckpt")
    _, net = _petrun(family, tmp_path, pet_config, bases[family], tmp_path / "imported.ckpt")
    err = np.abs(net(Tensor(IDS)).asnumpy() - want).max()
    assert err <= ph.TOL, f"max |petrun - PEFT| = {err:.3g}"


def test_peft_gpt2_prefix_import_is_refused(bases, tmp_path):
    model = _trained_peft("gpt2", bases["gpt2"], peft.PrefixTuningConfig(
        num_virtual_tokens=P, task_type="CAUSAL_LM"), seed=6)
    model.save_pretrained(str(tmp_path / "peft"))
    yaml_path, _ = _petrun("gpt2", tmp_path, PTUNING2, bases["gpt2"])
    with pytest.raises(UserError, match="learned positions"):
        import_peft(yaml_path, tmp_path / "peft", tmp_path / "imported.ckpt")
    assert not (tmp_path / "imported.ckpt").exists()
