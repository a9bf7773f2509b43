"""ckpt.diagnose: a checkpoint that does not fit gets the fix for its actual cause."""
from petrun.ckpt.diagnose import NAMES_FIX, SIZE_FIX, family_of, methods_of, names_fix, shapes_fix
from tests.conftest import ROOT, run_cli

LLAMA = ["model.tok_embeddings.embedding_weight", "model.layers.0.attention.wq.weight",
         "model.layers.0.attention.wq.mindpet_delta_lora_a", "lm_head.weight"]
GPT2 = ["backbone.embedding.word_embedding.embedding_table", "backbone.blocks.0.layernorm1.gamma"]
GLM2 = ["transformer.embedding.embedding_weight",
        "transformer.encoder.layers.0.self_attention.query_key_value.weight"]
HF_LLAMA = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]


def test_family_and_methods_are_read_from_names():
    assert family_of(LLAMA) == "Llama2" and family_of(GPT2) == "GPT2"
    assert family_of(GLM2) == "ChatGLM2" and family_of(["foo.bar"]) is None
    assert methods_of(LLAMA) == {"lora"}
    assert methods_of(["x.mindpet_delta_ia3_l", "y.mindpet_delta_adapter_up.weight"]) == \
        {"ia3", "adapter"}


def test_names_fix_names_the_cause():
    assert "Hugging Face names" in names_fix(HF_LLAMA, LLAMA)
    assert "petrun ckpt convert" in names_fix(HF_LLAMA, LLAMA)
    fix = names_fix(LLAMA, GPT2)
    assert fix.startswith("this is a Llama2 checkpoint but the config builds GPT2")
    assert "LlamaForCausalLM" in fix
    ia3_model = ["model.layers.0.attention.wq.weight", "model.layers.0.attention.wk.mindpet_delta_ia3_l"]
    lora_adapter = ["model.layers.0.attention.wq.mindpet_delta_lora_a"]
    assert names_fix(lora_adapter, ia3_model).startswith(
        "the checkpoint holds LoRA weights but the config's pet_config builds IA3")
    assert "has no pet_config" in names_fix(lora_adapter, ["model.layers.0.attention.wq.weight"])
    assert "other layers" in names_fix(lora_adapter, ["model.layers.1.attention.wv.mindpet_delta_lora_a"])
    assert names_fix(["a.b"], ["c.d"]) == NAMES_FIX


def test_shapes_fix_reads_the_lora_rank_from_either_matrix():
    a = "model.layers.0.attention.wq.mindpet_delta_lora_a"
    b = "model.layers.0.attention.wq.mindpet_delta_lora_b"
    assert "lora_rank 8 (this config: 4)" in shapes_fix([(a, (8, 64), (4, 64))])
    assert "lora_rank: 16" in shapes_fix([(b, (64, 16), (64, 4))])
    assert "other pet_config values" in shapes_fix([("x.mindpet_delta_ia3_l", (1, 64), (1, 32))])
    assert shapes_fix([("model.layers.0.attention.wq.weight", (64, 64), (128, 128))]) == SIZE_FIX


def test_preflight_says_a_llama_checkpoint_is_not_for_a_gpt2_config(tmp_path):
    r = run_cli("finetune", "--config", ROOT / "configs/gpt2/lora_gpt2_tiny.yaml",
                "--load_checkpoint", ROOT / "data/demo/llama2_tiny_base.ckpt",
                "--output_dir", tmp_path / "out")
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Traceback" not in out
    assert "Fix: this is a Llama2 checkpoint but the config builds GPT2" in out
