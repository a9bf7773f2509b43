"""HF PEFT interop on Llama2: petrun adapters exported to PEFT's format load with PeftModel onto
the transformers model made from the same base weights and give petrun's logits (≤1e-4); adapters
made by PEFT import into petrun with PEFT's logits. LoRA, IA3, prompt tuning, P-tuning (MLP and
LSTM encoders: exported as their output) and the prefix methods (P-Tuning v2 with and without the
projection MLP, prefix tuning: prefix keys stored rotated by position P, as PEFT numbers the real
tokens after the prefix).
Needs the parity extra (torch, transformers, peft)."""
import json

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
from tests.pet.pet_helpers import cpu_device  # noqa: E402
from tests.models import parity_helpers as ph  # noqa: E402

pytestmark = pytest.mark.parity

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, SEQ = 97, 32, 2, 4, 2, 48, 16
MODEL_CONFIG = {"type": "LlamaConfig", "vocab_size": VOCAB, "hidden_size": HIDDEN,
                "num_layers": LAYERS, "num_heads": HEADS, "n_kv_heads": KV_HEADS,
                "intermediate_size": FFN, "seq_length": SEQ, "rms_norm_eps": 1e-5,
                "theta": 500.0, "compute_dtype": "float32", "param_init_type": "float32",
                "rotary_dtype": "float32", "pad_token_id": 0}
LORA = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wv|.*w2"}
IA3 = {"pet_type": "ia3", "target_modules": ".*wk|.*wv|.*w2", "feedforward_modules": ".*w2"}
PROMPT = {"pet_type": "prompt_tuning", "num_virtual_tokens": 5}
P = PROMPT["num_virtual_tokens"]
PTUNING_MLP = {"pet_type": "ptuning", "num_virtual_tokens": P, "encoder_reparameterization_type":
               "MLP", "encoder_hidden_size": 24, "encoder_dropout": 0.0}
PTUNING_LSTM = {**PTUNING_MLP, "encoder_reparameterization_type": "LSTM"}
PTUNING2 = {"pet_type": "ptuning2", "pre_seq_len": P, "prefix_projection": False,
            "dropout_prob": 0.0}
PTUNING2_MLP = {**PTUNING2, "prefix_projection": True, "projection_dim": 24}
PREFIX = {"pet_type": "prefixtuning", "prefix_token_num": P, "mid_dim": 24, "dropout_rate": 0.0}
EXPORTED = {"lora": LORA, "ia3": IA3, "prompt_tuning": PROMPT, "ptuning-mlp": PTUNING_MLP,
            "ptuning-lstm": PTUNING_LSTM, "ptuning2": PTUNING2, "ptuning2-projection": PTUNING2_MLP,
            "prefixtuning": PREFIX}


@pytest.fixture(autouse=True)
def pynative():
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random HF Llama (GQA), its safetensors and the petrun .ckpt converted from them."""
    tmp = tmp_path_factory.mktemp("peft")
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
        rope_theta=500.0, max_position_embeddings=SEQ + P, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ph.randomize_torch(model, seed=3)
    ph.save_hf(model, tmp / "hf")
    hf.convert_hf_to_ms("llama2", tmp / "hf", tmp / "base.ckpt")
    return tmp


def hf_base(base):
    return transformers.LlamaForCausalLM.from_pretrained(
        str(base / "hf"), attn_implementation="eager").eval()


def petrun_yaml(tmp, pet_config, name):
    return ph.write_petrun_yaml(tmp / f"{name}.yaml", "LlamaForCausalLM",
                                {**MODEL_CONFIG, "pet_config": pet_config})


def petrun_model(yaml_path, base, adapter=None):
    net = build_model(str(yaml_path), device_target="CPU")
    load_checkpoint(net, base / "base.ckpt")
    if adapter is not None:
        assert load_checkpoint(net, adapter)["kind"] == "adapter"
    net.set_train(False)
    return net


def perturb(net, seed=1, scale=0.3):
    """Adapter tensors far from their identity init, so a wrong mapping cannot pass."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if "mindpet_delta_" in p.name:
            base_value = 1.0 if p.name.endswith("ia3_l") else 0.0
            p.set_data(Tensor((base_value + rng.normal(0, scale, p.shape)).astype(np.float32)))


def logits(net, ids):
    return net(Tensor(ids)).asnumpy()


def peft_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
    return out[:, -ids.shape[1]:]   # prompt tuning: PEFT also returns the virtual positions


IDS = ph.random_ids(VOCAB, 2, 12, seed=7)


@pytest.mark.parametrize("pet_config", list(EXPORTED.values()), ids=list(EXPORTED))
def test_petrun_adapter_loads_in_peft_with_the_same_logits(base, tmp_path, pet_config):
    yaml_path = petrun_yaml(tmp_path, pet_config, "pet")
    net = petrun_model(yaml_path, base)
    base_logits = logits(net, IDS)
    perturb(net)
    want = logits(net, IDS)
    assert np.abs(want - base_logits).max() > 0.1, "the adapter must change the logits"
    save_params([p for p in net.get_parameters() if "mindpet_delta_" in p.name],
                tmp_path / "adapter.ckpt")
    export_peft(yaml_path, tmp_path / "adapter.ckpt", tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    loaded = peft.PeftModel.from_pretrained(hf_base(base), str(tmp_path / "peft")).eval()
    assert loaded.peft_config["default"].peft_type.value == cfg["peft_type"]
    got = peft_logits(loaded, IDS)
    err = np.abs(got - want).max()
    assert err <= ph.TOL, f"max |PEFT - petrun| = {err:.3g}"


def _peft_lora():
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                           target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")


def _peft_ia3():
    return peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                          feedforward_modules=["down_proj"], task_type="CAUSAL_LM")


def _peft_prompt():
    return peft.PromptTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM")


def _peft_ptuning():
    return peft.PromptEncoderConfig(num_virtual_tokens=P, encoder_hidden_size=24,
                                    task_type="CAUSAL_LM")


def _peft_prefix():
    return peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM")


@pytest.mark.parametrize("make, pet_config", [(_peft_lora, LORA), (_peft_ia3, IA3),
                                              (_peft_prompt, PROMPT), (_peft_ptuning, PROMPT),
                                              (_peft_prefix, PTUNING2)],
                         ids=["lora", "ia3", "prompt_tuning", "ptuning-as-prompt", "prefix"])
def test_peft_adapter_imports_with_the_same_logits(base, tmp_path, make, pet_config):
    model = peft.get_peft_model(hf_base(base), make())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:   # exactly the adapter's parameters
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    want = peft_logits(model, IDS)
    assert np.abs(want - peft_logits(hf_base(base), IDS)).max() > 0.1, "adapter must matter"
    model.save_pretrained(str(tmp_path / "peft"))   # prompt methods: the encoder's output
    yaml_path = petrun_yaml(tmp_path, pet_config, "pet")
    import_peft(yaml_path, tmp_path / "peft", tmp_path / "imported.ckpt")
    net = petrun_model(yaml_path, base, tmp_path / "imported.ckpt")
    err = np.abs(logits(net, IDS) - want).max()
    assert err <= ph.TOL, f"max |petrun - PEFT| = {err:.3g}"
