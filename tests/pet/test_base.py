"""Targeting, naming, freezing and the report (petrun.pet.base) plus the apply_pet front door."""
import subprocess
import sys

import pytest
from mindspore import nn

from petrun.errors import UserError
from petrun.pet import METHODS, apply_pet, parse_pet_config
from petrun.pet.base import (TARGET_KEY, alternative_hits, count_parameters, find_targets,
                             freeze, match_targets, refresh_parameter_names, replace_child,
                             split_alternatives, trainable_line)
from petrun.pet.config import PET_CONFIGS

from tests.pet.pet_helpers import ATTN, FFN


def lora(**kw):
    return {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.0, **kw}


# ---------------------------------------------------------------------------------------------
# Splitting a pattern into alternatives


@pytest.mark.parametrize("pattern, parts", [
    (".*wq|.*wk|.*wv", [".*wq", ".*wk", ".*wv"]),
    (".*(wq|wk)|dense", [".*(wq|wk)", "dense"]),
    (r".*w[|q]|a\|b", [r".*w[|q]", r"a\|b"]),
    (r"[]|]x|y", [r"[]|]x", "y"]),
    (r"[^]|]x|y", [r"[^]|]x", "y"]),
    ("(?i)WQ|wv", ["(?i)WQ", "(?i)wv"]),
    (".*query_key_value*", [".*query_key_value*"]),
])
def test_split_alternatives(pattern, parts):
    assert split_alternatives(pattern) == parts


# ---------------------------------------------------------------------------------------------
# Matching on a tiny Llama (MindFormers semantics)


def test_attention_pattern_hits_exactly_the_attention_projections(llama):
    targets = find_targets(llama, ".*wq|.*wk|.*wv|.*wo")
    assert [t.path for t in targets] == [
        f"model.layers.{i}.attention.{n}" for i in range(2) for n in ATTN]
    assert alternative_hits(llama, ".*wq|.*wk|.*wv|.*wo") == {f".*{n}": 2 for n in ATTN}


def test_lm_head_is_never_a_target(llama):
    # 'lm_head' would be adapted if the walk started at the top-level net instead of `model`.
    paths = [t.path for t in match_targets(llama, "w1|w2|w3|lm_head").targets]
    assert paths == [f"model.layers.{i}.feed_forward.{n}"
                     for i in range(2) for n in ("w1", "w3", "w2")]


def test_full_path_pattern_matches_nothing(llama):
    with pytest.raises(UserError) as e:
        find_targets(llama, r"model\.layers\.\d+\.attention\.wq")
    err = e.value
    assert err.key == TARGET_KEY
    assert "matches no linear layer" in err.message and "dotted path" in err.message
    assert ".*wq" in err.fix


def test_dead_alternative_is_an_error_even_when_another_matches(llama):
    with pytest.raises(UserError) as e:
        find_targets(llama, ".*wq|.*query_key_value")
    err = e.value
    assert err.key == TARGET_KEY
    assert "'.*query_key_value'" in err.message
    for name in ATTN + FFN:
        assert name in err.message  # lists the linear layers that do exist
    assert "'.*wq' (2 layers)" in err.message
    hits = match_targets(llama, ".*wq|.*query_key_value").hits
    assert hits == {".*wq": 2, ".*query_key_value": 0}


def test_fully_dead_pattern_lists_existing_layers_and_suggests_one(llama):
    with pytest.raises(UserError) as e:
        find_targets(llama, ".*q_proj|.*v_proj")
    assert e.value.key == TARGET_KEY
    assert "Linear layers that exist: wq (x2), wk (x2)" in e.value.message
    assert "target_modules: '.*wq|.*wk|.*wv|.*wo'" in e.value.fix
    assert "key 'model.model_config.pet_config.target_modules'" in str(e.value)


def test_matching_non_linear_cell_stops_the_walk(llama):
    # `.*attention` matches the LlamaAttention cell: MindFormers skips it and its children.
    result = match_targets(llama, ".*attention$")
    assert result.targets == []
    assert ("model.layers.0.attention", "LlamaAttention") in result.skipped
    with pytest.raises(UserError, match="not a linear layer"):
        find_targets(llama, ".*attention$|.*w1")
    # '.*wq' is right, but '.*attention' hides it: the error says why instead of "no such layer".
    with pytest.raises(UserError) as e:
        find_targets(llama, ".*attention|.*wq")
    assert ("'.*wq' names 'model.layers.0.attention.wq', but the walk never reaches it"
            in e.value.message)


def test_anchor_hint_for_unanchored_names(llama):
    with pytest.raises(UserError) as e:
        find_targets(llama, "q")
    assert "re.match anchors" in e.value.message and ".*wq" in e.value.fix


def test_exclude_layers(llama):
    paths = [t.path for t in find_targets(llama, ".*w.", exclude_layers=["feed_forward"])]
    assert paths == [f"model.layers.{i}.attention.{n}" for i in range(2) for n in ATTN]
    # Excluding a layer itself (local-name re.match), not only a parent.
    with pytest.raises(UserError):  # '.*wv' is now dead: every wv is excluded
        find_targets(llama, ".*wq|.*wv", exclude_layers=["wv"])
    assert [t.name for t in find_targets(llama, ".*w[qv]", exclude_layers=["wv"])] == ["wq", "wq"]


def test_invalid_regex_is_a_user_error(llama):
    with pytest.raises(UserError) as e:
        find_targets(llama, ".*wq|(")
    assert e.value.key == TARGET_KEY and "not a valid regular expression" in e.value.message
    with pytest.raises(UserError) as e:
        find_targets(llama, ".*wq", exclude_layers=["["])
    assert e.value.key.endswith("exclude_layers")


def test_nn_dense_and_linear_are_targets_and_sequential_replacement(toy):
    # '.*' matches 'layers' first (a CellList, not linear), so nothing inside it is searched.
    assert [t.path for t in find_targets(toy, ".*")] == ["model.proj", "model.out"]
    paths = [t.path for t in find_targets(toy, "wq|proj|out")]
    assert paths == ["model.layers.0.wq", "model.layers.1.wq", "model.proj", "model.out"]
    seq = nn.SequentialCell([nn.Dense(2, 3), nn.ReLU(), nn.Dense(3, 2)])
    replace_child(seq, "2", nn.Dense(3, 5))
    assert seq[2].out_channels == 5 and seq._cells["2"] is seq[2]


# ---------------------------------------------------------------------------------------------
# Naming, freezing, report


def test_names_are_full_paths_after_injection(llama):
    report = apply_pet(llama, lora(target_modules=".*wq"))
    names = [p.name for p in llama.get_parameters()]
    assert "model.layers.0.attention.wq.mindpet_delta_lora_a" in names
    assert "model.layers.1.attention.wq.mindpet_delta_lora_b" in names
    assert "model.layers.0.attention.wq.weight" in names  # base name unchanged
    assert "lm_head.weight" in names and "model.tok_embeddings.embedding_weight" in names
    assert len(names) == len(set(names))
    assert report.targets == ["model.layers.0.attention.wq", "model.layers.1.attention.wq"]


def test_refresh_parameter_names_fixes_local_prefixes(toy):
    toy.model.proj = nn.Dense(8, 8)           # MindSpore names it 'proj.weight', not the path
    assert toy.model.proj.weight.name == "proj.weight"
    refresh_parameter_names(toy)
    assert toy.model.proj.weight.name == "model.proj.weight"


def test_freeze_leaves_only_lora_trainable(llama):
    apply_pet(llama, lora(target_modules=".*wq|.*wv"))
    trainable = {p.name for p in llama.trainable_params()}
    assert trainable == {f"model.layers.{i}.attention.{n}.mindpet_delta_lora_{ab}"
                         for i in range(2) for n in ("wq", "wv") for ab in "ab"}


def test_freeze_include_exclude_semantics(llama):
    apply_pet(llama, lora(target_modules=".*wq"))
    freeze(llama, "lora",
           freeze_include=["*layers.0*", "*norm_out*", "*layers.1.*lora_b"],
           freeze_exclude=["*lm_head*", "*norm_out*", "*layers.0.attention_norm*",
                           "*layers.1.*lora_b"])
    state = {p.name: p.requires_grad for p in llama.get_parameters()}
    assert not state["model.layers.0.attention.wq.mindpet_delta_lora_a"]  # include only: frozen
    assert state["model.layers.1.attention.wq.mindpet_delta_lora_a"]      # untouched delta
    assert state["lm_head.weight"]                                 # exclude only: trainable
    # In both lists: left as the delta rule set it (trainable delta; frozen non-delta).
    assert state["model.layers.1.attention.wq.mindpet_delta_lora_b"]
    assert not state["model.norm_out.weight"]
    assert not state["model.layers.0.attention_norm.weight"]
    assert not state["model.layers.1.feed_forward.w1.weight"]


def test_freeze_rejects_dead_globs_and_freezing_everything(llama):
    apply_pet(llama, lora(target_modules=".*wq"))
    with pytest.raises(UserError) as e:
        freeze(llama, "lora", freeze_exclude=["lm_head"])  # no '*': matches no full name
    assert e.value.key == "model.model_config.pet_config.freeze_exclude"
    with pytest.raises(UserError, match="no trainable parameter"):
        freeze(llama, "lora", freeze_include=["*"])


def test_report_line_format():
    assert trainable_line(4_194_304, 6_742_609_920) == (
        "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622")


def test_report_counts_match_hand_computation(llama):
    base_total = count_parameters(llama)[1]
    # hidden 32, 4 heads x 8, 2 kv heads: wq/wo 32→32, wk/wv 32→16; ffn 96 (4·32·2/3 rounded
    # up to a multiple of 16); embedding and lm_head 128x32; three RMSNorm vectors.
    assert base_total == 128 * 32 * 2 + 2 * (32 + 32 * 32 * 2 + 16 * 32 * 2 + 32 + 3 * 96 * 32) + 32
    report = apply_pet(llama, lora(target_modules=".*wq|.*wk|.*wv|.*wo", lora_rank=4))
    per_layer = 4 * 32 + 32 * 4 + 2 * (4 * 32 + 16 * 4) + 4 * 32 + 32 * 4
    assert report.trainable == 2 * per_layer == 1792
    assert report.total == base_total + 1792
    assert str(report) == report.line == (
        f"trainable params: 1,792 || all params: {base_total + 1792:,d} || "
        f"trainable%: {100 * 1792 / (base_total + 1792):.4f}")


# ---------------------------------------------------------------------------------------------
# apply_pet: config validation and dispatch


def test_unknown_pet_type_lists_known_types(toy):
    with pytest.raises(UserError) as e:
        apply_pet(toy, {"pet_type": "loar", "target_modules": ".*wq"})
    assert e.value.key == "model.model_config.pet_config.pet_type"
    assert all(t in e.value.message for t in PET_CONFIGS)
    assert "'lora'" in e.value.fix


def test_every_config_type_has_a_method():
    from petrun.pet import resolve_method
    assert set(METHODS) == set(PET_CONFIGS)
    assert all(callable(resolve_method(t)) for t in METHODS)


@pytest.mark.parametrize("bad, key", [
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"target_modules": None}, "target_modules"),
    ({"lora_rnak": 4}, "lora_rnak"),
])
def test_config_errors_name_the_dotted_key(bad, key):
    cfg = {"pet_type": "lora", "target_modules": ".*wq", **bad}
    with pytest.raises(UserError) as e:
        parse_pet_config(cfg)
    assert e.value.key == f"model.model_config.pet_config.{key}"
    if key == "lora_rnak":
        assert "'lora_rank'" in e.value.fix


@pytest.mark.parametrize("bad, key", [
    ({"compute_dtype": "float8"}, "compute_dtype"),
    ({"exclude_layers": 3}, "exclude_layers"),
    ({"freeze_include": [1]}, "freeze_include"),
    ({"freeze_exclude": "nothing*"}, "freeze_exclude"),   # valid type, but matches no parameter
])
def test_apply_errors_name_the_key_and_leave_the_net_alone(toy, bad, key):
    names_before = [p.name for p in toy.get_parameters()]
    with pytest.raises(UserError) as e:
        apply_pet(toy, lora(target_modules="wq", **bad))
    assert e.value.key == f"model.model_config.pet_config.{key}"
    if key != "freeze_exclude":  # type errors are caught before the net is modified
        assert [p.name for p in toy.get_parameters()] == names_before


def test_importing_petrun_pet_does_not_import_mindspore():
    code = ("import sys, petrun.pet, petrun.pet.base, petrun.pet.config; "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
