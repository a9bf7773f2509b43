"""`petrun export` (issue 19 part 3): base + LoRA adapter → one folder that transformers loads with
AutoModelForCausalLM and AutoTokenizer, for Llama2, ChatGLM2 and GPT-2. The oracle is
transformers itself: its logits and greedy tokens against petrun's model with the adapter
unmerged, its tokenizer's ids against petrun's tokenizer, its apply_chat_template against
petrun's templates (petrun/data/templates.py + conversation.py). --format peft loads in PEFT.
Needs the parity extra (torch, transformers, peft)."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from petrun.api import build_model, load_checkpoint  # noqa: E402
from petrun.ckpt.export import export_model  # noqa: E402
from petrun.ckpt.io import save_params  # noqa: E402
from petrun.errors import UserError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.pet.pet_helpers import cpu_device  # noqa: E402

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parents[2]
DEMO_SPM = str(ROOT / "data" / "demo" / "tokenizer.model")
TOL = 1e-4
TEXT = "The quick brown fox jumps over the lazy dog. Valkyria 3 was released in 2011!"

LLAMA = {"type": "LlamaConfig", "vocab_size": 512, "hidden_size": 32, "num_layers": 2,
         "num_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "seq_length": 256,
         "compute_dtype": "float32", "param_init_type": "float32", "rotary_dtype": "float32",
         "use_flash_attention": False}
GLM2 = {"type": "ChatGLM2Config", "padded_vocab_size": 520, "hidden_size": 32, "num_layers": 2,
        "num_attention_heads": 4, "multi_query_group_num": 2, "kv_channels": 8,
        "ffn_hidden_size": 40, "seq_length": 256, "rope_ratio": 0.05, "layernorm_epsilon": 1e-5,
        "compute_dtype": "float32", "param_init_type": "float32"}
# MindFormers' GPT-2 uses <|endoftext|> (id 0 here) as bos, eos and pad, and petrun masks pad keys
# as MindFormers does; transformers masks nothing. The pad id is moved to an extra row no prompt
# holds, so the comparison is of the weights, not of that convention.
GPT2 = {"type": "GPT2Config", "vocab_size": 301, "hidden_size": 32, "num_layers": 2,
        "num_heads": 4, "seq_length": 256, "compute_dtype": "float32",
        "param_init_type": "float32", "hidden_act": "gelu", "embedding_dropout_prob": 0.0,
        "hidden_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
        "eos_token_id": 0, "bos_token_id": 0, "pad_token_id": 300}
LORA = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0}
FAMILIES = {
    "llama2": ("LlamaForCausalLM", LLAMA, ".*wq|.*wv|.*w2",
               {"type": "LlamaTokenizer", "vocab_file": DEMO_SPM}),
    "glm2": ("ChatGLM2ForConditionalGeneration", GLM2, ".*query_key_value|.*dense_4h_to_h",
             {"type": "ChatGLM2Tokenizer", "vocab_file": DEMO_SPM}),
    # GPT-2's output.mapping stores [in, out]: its merge adds the transposed delta.
    "gpt2": ("GPT2LMHeadModel", GPT2, ".*dense1|.*dense3|.*mapping", None),   # BPE made below
}


@pytest.fixture(autouse=True)
def pynative():
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)


def bpe_files(folder: Path) -> dict:
    """GPT-2 style vocab.json + merges.txt of a tiny byte-level BPE trained here (no download);
    '<|endoftext|>' is id 0."""
    from tests.store.tiny_hf import gpt2_bpe
    gpt2_bpe(folder, [TEXT, "A chat between a user and an assistant.",
                      "Hello there, how are you today?"] * 4)
    return {"type": "GPT2Tokenizer", "vocab_file": str(folder / "vocab.json"),
            "merges_file": str(folder / "merges.txt")}


def write_config(path: Path, family: str, pet: bool, base: Path, tokenizer: dict | None,
                 template: str | None = None) -> Path:
    arch, mc, targets, _ = FAMILIES[family]
    mc = {**mc, "pet_config": {**LORA, "target_modules": targets}} if pet else dict(mc)
    data = {"model": {"arch": {"type": arch}, "model_config": mc},
            "load_checkpoint": str(base)}
    if tokenizer:
        data["processor"] = {"tokenizer": {**tokenizer,
                                           **({"chat_template": template} if template else {})}}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def randomize(params, seed: int) -> None:
    """Every weight far from init (norm scales near 1), so logits are far from uniform."""
    rng = np.random.default_rng(seed)
    for p in params:
        value = rng.normal(0, 0.2, p.shape)
        if "norm" in p.name and p.name.endswith(("weight", "gamma")):
            value += 1.0
        p.set_data(Tensor(value.astype(np.float32)))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Per family: a config with LoRA, random base weights, a random adapter and the petrun
    model holding both (unmerged)."""
    out = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(family)
        tok = FAMILIES[family][3] or bpe_files(tmp / "bpe")
        cfg = write_config(tmp / "lora.yaml", family, True, tmp / "base.ckpt", tok)
        ms.set_seed(0)
        net = build_model(str(cfg), device_target="CPU")
        base = [p for p in net.get_parameters() if "mindpet_delta_" not in p.name]
        delta = [p for p in net.get_parameters() if "mindpet_delta_" in p.name]
        randomize(base, 1)
        randomize(delta, 2)
        save_params(base, tmp / "base.ckpt")
        save_params(delta, tmp / "adapter.ckpt")
        net.set_train(False)
        out[family] = {"tmp": tmp, "cfg": cfg, "net": net, "tok": tok}
    return out


def petrun_logits(net, ids):
    return net(Tensor(np.asarray(ids, np.int32))).asnumpy().astype(np.float32)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def random_ids(vocab, seed=5):
    return np.random.default_rng(seed).integers(1, vocab, (2, 12)).astype(np.int64)


def vocab_of(family):
    """Ids the tokenizer can produce (below every model's embedding rows and pad id)."""
    return {"llama2": 512, "glm2": 512, "gpt2": 300}[family]


def petrun_greedy(net, prompt, n, eos):
    from petrun.infer.generate import GenerationConfig, generate

    res = generate(net, [prompt], GenerationConfig(max_new_tokens=n, eos_token_ids=(eos,),
                                                   use_cache=False, jit=False))
    return res.tokens[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_loads_in_transformers_with_petruns_logits_tokens_and_template(made, family):
    m = made[family]
    out = m["tmp"] / "hf"
    result = export_model(m["cfg"], out, adapter=m["tmp"] / "adapter.ckpt")
    assert result.pet_type == "lora" and result.merged_layers > 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert ("tokenizer.model" in names) == (family != "gpt2")
    assert ({"vocab.json", "merges.txt"} <= names) == (family == "gpt2")
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]

    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = random_ids(vocab_of(family))
    err = np.abs(hf_logits(model, ids) - petrun_logits(m["net"], ids)).max()
    assert err <= TOL, f"max |transformers - petrun| = {err:.3g}"

    from petrun.data.conversation import encode
    from petrun.data.templates import render, to_text
    from petrun.data.tokenizer import load_tokenizer

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    tok = load_tokenizer(m["tok"])
    assert hf_tok(TEXT)["input_ids"] == list(tok.prefix_ids) + tok.encode(TEXT)
    assert hf_tok.decode(tok.encode(TEXT)) == tok.decode(tok.encode(TEXT))

    # The chat template: petrun's text, and for the prompt petrun generates from, its ids.
    template = result.template
    chat = [{"role": "user", "content": "Hello there, how are you?"}]
    text = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    segments = render(template, chat, add_generation_prompt=True)
    lead = {"bos": hf_tok.bos_token, "prefix": hf_tok.decode(tok.prefix_ids)}
    assert text == lead.get(segments[0].special, "") + to_text(segments, eos=hf_tok.eos_token)
    prompt, _ = encode(template, chat, tok, add_generation_prompt=True)
    assert list(hf_tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]) == prompt

    # Greedy decoding from that prompt: the same tokens.
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
    hf_new = gen[0, len(prompt):].tolist()
    assert hf_new == petrun_greedy(m["net"], prompt, 6, tok.eos_id)[:len(hf_new)]


TURNS = [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "And another?"},
         {"role": "assistant", "content": "Red, of course."}]


@pytest.mark.parametrize("template", ["alpaca", "vicuna", "glm2", "none"])
def test_multi_turn_chat_template_renders_petruns_training_text(made, tmp_path, template):
    """Multi-turn with a system turn, ending in an answer (a training sample) and ending in a
    question (generation): transformers renders petrun's text; for the vicuna family, whose
    rounds petrun encodes as whole texts, the ids of petrun's training sample as well."""
    from petrun.data.conversation import encode
    from petrun.data.templates import render, to_text
    from petrun.data.tokenizer import load_tokenizer

    family = "glm2" if template == "glm2" else "llama2"
    m = made[family]
    cfg = write_config(tmp_path / "c.yaml", family, False, m["tmp"] / "base.ckpt", m["tok"],
                       template)
    export_model(cfg, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    tok = load_tokenizer(m["tok"])
    turns = TURNS[1:] if template == "glm2" else TURNS
    for conv, gen in ((turns, False), (turns[:-1], True)):
        segments = render(template, conv, add_generation_prompt=gen)
        lead = {"bos": hf_tok.bos_token, "prefix": hf_tok.decode(tok.prefix_ids)}
        want = lead.get(segments[0].special, "") + to_text(segments, eos=hf_tok.eos_token)
        assert hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == want
        if template in ("alpaca", "vicuna"):
            ids = hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen,
                                             return_dict=True)["input_ids"]
            assert list(ids) == encode(template, conv, tok, add_generation_prompt=gen)[0]
    if template == "glm2":   # ChatGLM2 has no system turn: both refuse it
        with pytest.raises(Exception, match="system"):
            hf_tok.apply_chat_template(TURNS, tokenize=False)


def test_sharded_export_loads(made, tmp_path):
    m = made["llama2"]
    out = tmp_path / "sharded"
    result = export_model(m["cfg"], out, adapter=m["tmp"] / "adapter.ckpt",
                          max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert result.shards == len(shards) > 1 and not (out / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = random_ids(vocab_of("llama2"))
    assert np.abs(hf_logits(model, ids) - petrun_logits(m["net"], ids)).max() <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_peft_format_loads_in_peft_on_the_base_export(made, tmp_path, family):
    m = made[family]
    plain = write_config(tmp_path / "plain.yaml", family, False, m["tmp"] / "base.ckpt", m["tok"])
    export_model(plain, tmp_path / "base_hf")
    result = export_model(m["cfg"], tmp_path / "peft", adapter=m["tmp"] / "adapter.ckpt",
                          fmt="peft", base_model=str(tmp_path / "base_hf"))
    names = {p.name for p in (tmp_path / "peft").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= names
    assert result.pet_type == "LORA"
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_hf"))
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    ids = random_ids(vocab_of(family))
    err = np.abs(hf_logits(model, ids) - petrun_logits(m["net"], ids)).max()
    assert err <= TOL, f"max |PEFT - petrun| = {err:.3g}"


def test_full_finetune_export(made, tmp_path):
    """No adapter: a full finetune's checkpoint (every weight changed) is exported as it is."""
    m = made["gpt2"]
    plain = write_config(tmp_path / "full.yaml", "gpt2", False, m["tmp"] / "base.ckpt", m["tok"])
    net = build_model(str(plain), device_target="CPU")
    randomize(net.get_parameters(), 7)
    save_params(net.get_parameters(), tmp_path / "full.ckpt")
    net.set_train(False)
    result = export_model(plain, tmp_path / "hf", checkpoint=tmp_path / "full.ckpt")
    assert result.pet_type is None and result.merged_layers == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = random_ids(vocab_of("gpt2"))
    assert np.abs(hf_logits(model, ids) - petrun_logits(net, ids)).max() <= TOL


def test_refusals_exit_2_and_leave_no_folder(made, tmp_path):
    m = made["llama2"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("export", "--config", m["cfg"], "--adapter", m["tmp"] / "adapter.ckpt",
                "--output", out, timeout=300)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = run_cli("export", "--config", m["cfg"], "--adapter", m["tmp"] / "adapter.ckpt",
                "--output", out, "--overwrite", timeout=300)
    assert r.returncode == 0 and "wrote" in r.stdout and "AutoTokenizer" in r.stdout, r.stderr
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    # Prompt tuning adds virtual tokens: nothing to fold into the weights; --format peft is the fix.
    cfg = yaml.safe_load(m["cfg"].read_text())
    cfg["model"]["model_config"]["pet_config"] = {"pet_type": "prompt_tuning",
                                                  "num_virtual_tokens": 3}
    (tmp_path / "pt.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="--format peft"):
        export_model(tmp_path / "pt.yaml", tmp_path / "pt", adapter=m["tmp"] / "adapter.ckpt")
    # A config without a tokenizer file: the fix names --tokenizer.
    bare = write_config(tmp_path / "bare.yaml", "llama2", True, m["tmp"] / "base.ckpt", None)
    with pytest.raises(UserError, match="--tokenizer"):
        export_model(bare, tmp_path / "bare", adapter=m["tmp"] / "adapter.ckpt")
    assert not (tmp_path / "pt").exists() and not (tmp_path / "bare").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_failure_midway_leaves_the_old_output(made, tmp_path, monkeypatch):
    """A crash while writing (here: the tokenizer step raising) removes the partial folder and
    keeps the previous export untouched."""
    m = made["llama2"]
    out = tmp_path / "hf"
    export_model(m["cfg"], out, adapter=m["tmp"] / "adapter.ckpt")
    before = sorted(p.name for p in out.iterdir())
    import petrun.data.hf_tokenizer as hf_tok

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(hf_tok, "write_hf_tokenizer", boom)
    with pytest.raises(OSError):
        export_model(m["cfg"], out, adapter=m["tmp"] / "adapter.ckpt", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_name_map_names_real_modules_on_both_sides(made, tmp_path, family):
    """ckpt/hf.py's module links, which PEFT conversion reads as its layer map (issue 15: one
    HF ↔ MindFormers name map), name modules that exist in petrun's model and in transformers'
    model with matching sizes, and cover every matrix transformers has but the embeddings."""
    from petrun.ckpt.hf import module_links
    from petrun.ckpt.peft_format import layer_maps
    from petrun.models.registry import build_config

    m = made[family]
    mc = build_config(yaml.safe_load(m["cfg"].read_text())["model"])
    links = module_links(family, mc)
    assert layer_maps(family, mc) == links
    plain = write_config(tmp_path / "plain.yaml", family, False, m["tmp"] / "base.ckpt", m["tok"])
    export_model(plain, tmp_path / "hf")
    hf_sd = {n: tuple(t.shape) for n, t in
             transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
             .state_dict().items()}
    ours = {p.name: tuple(p.shape) for p in m["net"].get_parameters()}
    for ms_mod, link in links.items():
        mine = ours[f"{ms_mod}.weight"]
        theirs = [hf_sd[f"{h}.weight"] for h in link.hf]
        if link.kind == "same":
            assert np.prod(mine) == np.prod(theirs[0]), ms_mod
        elif link.kind == "split":
            assert [t[0] for t in theirs] == list(link.rows) and sum(link.rows) == mine[0]
        else:
            assert np.prod(theirs[0]) == 3 * np.prod(mine) and link.part in (0, 1, 2)
    matrices = {n[:-len(".weight")] for n, s in hf_sd.items()
                if n.endswith(".weight") and len(s) == 2 and "emb" not in n and "wte" not in n
                and "wpe" not in n and not (family == "gpt2" and n == "lm_head.weight")}
    assert matrices <= {h for link in links.values() for h in link.hf}


IA3 = {"llama2": {"pet_type": "ia3", "target_modules": ".*wk|.*wv|.*w2",
                  "feedforward_modules": ".*w2"},
       "glm2": {"pet_type": "ia3", "target_modules": ".*query_key_value|.*dense_4h_to_h",
                "feedforward_modules": ".*dense_4h_to_h"},
       # GPT-2: its [in, out] layers too (output.mapping scales outputs, *.projection inputs)
       "gpt2": {"pet_type": "ia3", "target_modules": ".*dense1|.*dense3|.*mapping|.*projection",
                "feedforward_modules": ".*projection"}}


@pytest.mark.parametrize("family", list(IA3))
def test_ia3_adapter_exports_merged(made, tmp_path, family):
    """IA3 folds into weights (and GLM2's query_key_value bias) as well: transformers gives the
    logits of petrun's model with the adapter live."""
    m = made[family]
    cfg = yaml.safe_load(m["cfg"].read_text())
    cfg["model"]["model_config"]["pet_config"] = IA3[family]
    (tmp_path / "ia3.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    net = build_model(str(tmp_path / "ia3.yaml"), device_target="CPU")
    load_checkpoint(net, m["tmp"] / "base.ckpt")
    delta = [p for p in net.get_parameters() if "mindpet_delta_" in p.name]
    rng = np.random.default_rng(4)
    for p in delta:
        p.set_data(Tensor((1.0 + rng.normal(0, 0.3, p.shape)).astype(np.float32)))
    save_params(delta, tmp_path / "ia3.ckpt")
    net.set_train(False)
    result = export_model(tmp_path / "ia3.yaml", tmp_path / "hf", adapter=tmp_path / "ia3.ckpt")
    assert result.pet_type == "ia3" and result.merged_layers > 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = random_ids(vocab_of(family))
    err = np.abs(hf_logits(model, ids) - petrun_logits(net, ids)).max()
    assert err <= TOL, f"max |transformers - petrun| = {err:.3g}"


def test_tokenizer_flag_and_bf16(made, tmp_path):
    """--tokenizer supplies the file a config lacks (the type stays the config's); --dtype bf16
    writes bfloat16 tensors and says so in config.json, and transformers' logits stay within
    bfloat16 rounding of petrun's."""
    from safetensors import safe_open

    m = made["glm2"]
    cfg = write_config(tmp_path / "bare.yaml", "glm2", True, m["tmp"] / "base.ckpt",
                       {"type": "ChatGLM2Tokenizer"})
    export_model(cfg, tmp_path / "hf", adapter=m["tmp"] / "adapter.ckpt", tokenizer=DEMO_SPM,
                 dtype="bf16")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok.decode(hf_tok("Hi")["input_ids"][:2]) == "[gMASK]sop"   # ChatGLM2's prefix
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = random_ids(vocab_of("glm2"))
    want = petrun_logits(m["net"], ids)
    err = np.abs(hf_logits(model, ids) - want).max()
    assert 0 < err <= 0.05 * np.abs(want).max(), err
