"""run_mindformer.py's command line in petrun: every flag of MindFormers r1.0-r1.3 is mapped to
its config key or refused with a Fix; --options; predict's input flags; the run-mode rules of
the verbs and of `petrun run`. Nothing here builds a model (the CLI cases stop in option or
config checks), so the file runs in seconds; tests/parallel/test_seed_msrun.py runs the real
thing."""
from __future__ import annotations

import sys

import pytest
import yaml

from petrun.cli import run_mode as modes
from petrun.cli.infer_cmd import take_predict_input
from petrun.config import load_config
from petrun.config.overrides import MF_FLAG_TABLE, Override, parse_args
from petrun.errors import UserError
from tests.conftest import ROOT, run_cli

TINY = "configs/llama2/lora_llama2_tiny.yaml"

# run_mindformer.py's argparse flags, read from each release branch of mindspore-lab/mindformers
# (r1.0 = v1.0.x; r1.3.0's set is also r1.3.1's and v1.3.2's).
R1_0 = ["config", "mode", "device_id", "device_target", "run_mode", "do_eval", "train_dataset_dir",
        "eval_dataset_dir", "predict_data", "predict_batch_size", "load_checkpoint",
        "src_strategy_path_or_dir", "auto_trans_ckpt", "only_save_strategy", "resume_training",
        "strategy_load_checkpoint", "remote_save_url", "seed", "use_parallel", "profile",
        "options", "epochs", "batch_size", "gradient_accumulation_steps", "sink_mode",
        "num_samples", "output_dir"]
R1_2 = R1_0 + ["transform_process_num"]
R1_3 = R1_2 + ["modal_type", "adapter_id", "register_path"]

# flag, value, the key it sets, the value there
MAPPED = [
    ("mode", "1", "context.mode", 1),
    ("device_id", "3", "context.device_id", 3),
    ("device_target", "CPU", "context.device_target", "CPU"),
    ("run_mode", "train", "run_mode", "train"),
    ("do_eval", "false", "do_eval", False),
    ("train_dataset_dir", "/d/t.mindrecord", "train_dataset.data_loader.dataset_dir", "/d/t.mindrecord"),
    ("eval_dataset_dir", "/d/e.mindrecord", "eval_dataset.data_loader.dataset_dir", "/d/e.mindrecord"),
    ("load_checkpoint", "/w/base.ckpt", "load_checkpoint", "/w/base.ckpt"),
    ("src_strategy_path_or_dir", "/s/", "src_strategy_path_or_dir", "/s/"),
    ("auto_trans_ckpt", "True", "auto_trans_ckpt", True),
    ("only_save_strategy", "False", "only_save_strategy", False),
    ("resume_training", "True", "resume_training", True),
    ("strategy_load_checkpoint", "/s/ckpt_strategy.ckpt", "parallel.strategy_ckpt_load_file",
     "/s/ckpt_strategy.ckpt"),
    ("remote_save_url", "obs://bucket/run", "remote_save_url", "obs://bucket/run"),
    ("seed", "7", "seed", 7),
    ("use_parallel", "FALSE", "use_parallel", False),
    ("profile", "True", "profile", True),
    ("epochs", "3", "runner_config.epochs", 3),
    ("batch_size", "2", "runner_config.batch_size", 2),
    ("gradient_accumulation_steps", "4", "runner_config.gradient_accumulation_steps", 4),
    ("sink_mode", "True", "runner_config.sink_mode", True),
    ("output_dir", "/tmp/o", "output_dir", "/tmp/o"),
    ("transform_process_num", "2", "transform_process_num", 2),
]
# flag, value, words the message must hold, words the Fix must hold
REFUSED = [
    ("num_samples", "100", "not supported", "runner_config.stop_step="),
    ("modal_type", "text", "take text only", "--predict_data TEXT"),
    ("adapter_id", "a1", "no SLoRA", "--adapter PATH"),
    ("register_path", "my_models/", "own model classes", "model.arch.type"),
    ("predict_data", "hello", "input of predict alone", "petrun predict --config C --predict_data"),
    ("predict_batch_size", "4", "input of predict alone", "petrun predict --predict_batch_size"),
    ("only_save_strategy", "True", "strategy files without a run", "petrun ckpt strategy"),
]
HANDLED_BY_THE_VERB = {"config", "options"}


def test_every_flag_of_r1_0_to_r1_3_is_mapped_or_refused():
    covered = {f for f, *_ in MAPPED} | {f for f, *_ in REFUSED} | HANDLED_BY_THE_VERB
    assert set(R1_3) - covered == set()
    assert set(R1_3) - HANDLED_BY_THE_VERB <= set(MF_FLAG_TABLE)
    for flag in R1_0:
        assert MF_FLAG_TABLE.get(flag, None) is None or MF_FLAG_TABLE[flag].since == "r1.0", flag
    assert MF_FLAG_TABLE["transform_process_num"].since == "r1.2.0"
    assert {MF_FLAG_TABLE[f].since for f in ("modal_type", "adapter_id", "register_path")} == {"r1.3.0"}


@pytest.mark.parametrize("flag,value,key,expect", MAPPED, ids=[m[0] for m in MAPPED])
def test_mapped_flag_lands_on_its_key(flag, value, key, expect):
    for words in ([f"--{flag}", value], [f"--{flag}={value}"]):
        (ov,) = parse_args(words)
        assert (ov.key, ov.value) == (key, expect)
    cfg = load_config(ROOT / TINY, [f"--{flag}", value])
    assert cfg.get(key) == expect
    assert cfg.origin(key) == "command line"


@pytest.mark.parametrize("flag", ["profile", "remote_save_url", "sink_mode", "transform_process_num"])
def test_accepted_and_ignored_flags_carry_a_notice(flag):
    value = dict((m[0], m[1]) for m in MAPPED)[flag]
    (ov,) = parse_args([f"--{flag}", value])
    assert ov.notice.startswith(f"--{flag} is accepted and ignored: ")


@pytest.mark.parametrize("flag,value,message,fix", REFUSED, ids=[r[0] + "-" + r[1] for r in REFUSED])
def test_refused_flag_says_why_and_the_petrun_way(flag, value, message, fix):
    with pytest.raises(UserError) as err:
        parse_args([f"--{flag}", value])
    assert f"--{flag}" in str(err.value) and message in err.value.message
    assert fix in err.value.fix


def test_strategy_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a folder") as err:
        parse_args(["--strategy_load_checkpoint", str(tmp_path)])
    assert "ckpt_strategy_rank_0.ckpt" in err.value.fix


def test_options_pairs_are_overrides_in_place():
    ovs = parse_args(["--seed", "1", "--options", "runner_config.epochs=3", "model.model_config.seq_length=64",
                      "--use_parallel", "True", "--options=seed=5"])
    assert [(o.key, o.value) for o in ovs] == [
        ("seed", 1), ("runner_config.epochs", 3), ("model.model_config.seq_length", 64),
        ("use_parallel", True), ("seed", 5)]
    # booleans parse as written (MindFormers' own --options turns every true/false into False)
    assert parse_args(["--options", "do_eval=True"])[0].value is True
    cfg = load_config(ROOT / TINY, ["--options", "runner_config.epochs=3", "seed=9"])
    assert (cfg.get("runner_config.epochs"), cfg.get("seed")) == (3, 9)


@pytest.mark.parametrize("words,message", [
    (["--options"], "--options needs at least one value"),
    (["--options", "--seed", "1"], "--options needs at least one value"),
    (["--options", "runner_config.epochs"], "--options takes key=value pairs, got 'runner_config.epochs'"),
])
def test_options_mistakes(words, message):
    with pytest.raises(UserError, match=message):
        parse_args(words)


# --------------------------------------------------------------------------- predict's input
def test_predict_data_texts_become_raw_prompts():
    options = {}
    rest, ovs = take_predict_input(["--predict_data", "I love Beijing, because", "a\\nb", "x=1",
                                    "--seed", "3", "--predict_batch_size", "2"], options)
    # argparse nargs='+': the values run up to the next option, overrides included
    assert options["prompt"] == ["I love Beijing, because", "a\nb", "x=1"]
    assert options["chat_template"] == "none"          # MindFormers' pipeline takes text as is
    assert rest == ["--seed", "3"]
    assert [(o.key, o.value) for o in ovs] == [("model.model_config.batch_size", 2)]


def test_predict_data_file_folder_and_conflicts(tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("one\ntwo\n")
    options = {}
    take_predict_input([f"--predict_data={lines}"], options)
    assert options == {"prompt_file": str(lines), "chat_template": "none"}
    options = {"chat_template": "alpaca"}
    take_predict_input(["--predict_data", "hi"], options)
    assert options["chat_template"] == "alpaca"        # an explicit --chat-template stays
    with pytest.raises(UserError, match="is a folder: MindFormers collects the images"):
        take_predict_input(["--predict_data", str(tmp_path)], {})
    with pytest.raises(UserError, match="--predict_data and --prompt given together"):
        take_predict_input(["--predict_data", "hi"], {"prompt": ["x"]})
    with pytest.raises(UserError, match="positive integer, got 'many'"):
        take_predict_input(["--predict_batch_size", "many"], {})


# --------------------------------------------------------------------------- run modes
def test_verbs_accept_their_modes_and_set_the_verb_when_none_is_asked():
    assert modes.for_verb("finetune", [Override("run_mode", "train", text="--run_mode train")]) == []
    assert modes.for_verb("train", [Override("run_mode", "finetune", text="--run_mode finetune")]) == []
    (ov,) = modes.for_verb("predict", [])
    assert (ov.key, ov.value) == ("run_mode", "predict")   # the YAML's run_mode yields to the verb
    for verb, other in (("finetune", "predict"), ("train", "eval"), ("eval", "finetune"),
                        ("predict", "train")):
        with pytest.raises(UserError, match=f"asks for {other}, but this is petrun {verb}"):
            modes.for_verb(verb, [Override("run_mode", other, text=f"--run_mode {other}")])


def _refused(r, *words):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Fix: " in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.mark.parametrize("verb,args,words", [
    ("finetune", ["--run_mode", "predict"],
     ["key '--run_mode': `--run_mode predict` asks for predict, but this is petrun finetune",
      "Fix: run petrun predict with the same arguments (or petrun run --run_mode predict"]),
    ("predict", ["--run_mode=eval", "--prompt", "x"], ["asks for eval, but this is petrun predict"]),
    ("eval", ["--options", "run_mode=train"],
     ["key 'run_mode': `run_mode=train` asks for train, but this is petrun eval"]),
    ("train", ["run_mode=export"], ["run_mode export", "not supported", "petrun ckpt merge"]),
    ("finetune", ["--predict_data", "hello"], ["--predict_data is an input of predict alone"]),
    ("eval", ["--predict_batch_size", "2"], ["--predict_batch_size is an input of predict alone"]),
    ("finetune", ["--num_samples", "8"], ["--num_samples (run_mindformer.py since r1.0) is not supported",
                                          "runner_config.stop_step"]),
    ("predict", ["--adapter_id", "a", "--predict_data", "x"], ["no SLoRA", "--adapter PATH"]),
    ("predict", ["--modal_type", "image", "--predict_data", "x.jpg"], ["take text only"]),
    ("finetune", ["--register_path", "ext/"], ["own model classes"]),
    ("finetune", ["--only_save_strategy", "True"], ["petrun ckpt strategy --config C --out DIR"]),
])
def test_cli_refusals(verb, args, words):
    _refused(run_cli(verb, "--config", TINY, *args, timeout=120), *words)


def test_finetune_takes_run_mode_train(tmp_path):
    # accepted: the run goes on and stops at the (missing) data, not at --run_mode
    r = run_cli("finetune", "--config", TINY, "--run_mode", "train", "--train_dataset_dir",
                tmp_path / "none.mindrecord", timeout=120)
    _refused(r, "none.mindrecord", "dataset path does not exist")
    assert "asks for" not in r.stderr and "--run_mode" not in r.stderr


def test_notice_is_printed_once_for_an_ignored_flag(tmp_path):
    r = run_cli("eval", "--config", TINY, "--profile", "True", "--remote_save_url", "obs://b/x",
                "--eval_dataset_dir", tmp_path / "none.jsonl", timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("note: --profile is accepted and ignored") == 1, r.stderr
    assert "note: --remote_save_url is accepted and ignored" in r.stderr


# --------------------------------------------------------------------------- petrun run
def _without_run_mode(tmp_path):
    data = load_config(ROOT / TINY).data
    data.pop("run_mode", None)
    for key in ("load_checkpoint",):
        data[key] = str(ROOT / data[key])
    data["processor"]["tokenizer"]["vocab_file"] = str(ROOT / data["processor"]["tokenizer"]["vocab_file"])
    path = tmp_path / "no_run_mode.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_dispatches_to_the_verb_the_run_mode_names(tmp_path):
    # --run_mode predict: predict's own checks answer (so the verb ran), naming --predict_data
    _refused(run_cli("run", "--config", TINY, "--run_mode", "predict", timeout=120),
             "nothing to generate from", "--predict_data TEXT")
    _refused(run_cli("run", "--config", TINY, "--run_mode", "predict", "--predict_data", "hi",
                     "--predict_batch_size", "0", timeout=120), "--predict_batch_size expects a positive")
    # the config's run_mode key, when no flag says otherwise
    plain = _without_run_mode(tmp_path)
    pred = tmp_path / "predict.yaml"
    pred.write_text(plain.read_text() + "run_mode: predict\n")
    _refused(run_cli("run", "--config", pred, timeout=120), "nothing to generate from")
    # a later run_mode= override wins over --run_mode, as it does on the verb
    _refused(run_cli("run", "--config", pred, "--run_mode", "finetune", "--options", "run_mode=eval",
                     "--eval_dataset_dir", tmp_path / "none.jsonl", timeout=120), "none.jsonl")


def test_run_without_any_run_mode_and_with_a_wrong_one(tmp_path):
    plain = _without_run_mode(tmp_path)
    _refused(run_cli("run", "--config", plain, timeout=120),
             "no run mode: neither --run_mode nor the config's run_mode key is set",
             "Fix: add --run_mode finetune")
    _refused(run_cli("run", "--config", TINY, "--run_mode", "finetuning", timeout=120),
             "run_mode 'finetuning' is not one of train, finetune, eval, predict")
    _refused(run_cli("run", "--config", TINY, "--run_mode", "export", timeout=120), "run_mode export")


def test_help_does_not_import_mindspore():
    import subprocess
    code = ("import sys\nfrom petrun.cli.main import main\ntry:\n    main(['run', '--help'])\n"
            "except SystemExit:\n    pass\nassert 'mindspore' not in sys.modules, 'mindspore imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "run mode" in r.stdout


def test_strategy_load_checkpoint_reaches_the_semi_auto_parallel_context():
    from petrun.parallel.context import parallel_context
    cfg = load_config(ROOT / "configs/llama2/lora_llama2_7b.yaml",
                      ["parallel_config.data_parallel=2", "parallel_config.model_parallel=4",
                       "parallel_config.pipeline_stage=1", "output_dir=/o",
                       "--strategy_load_checkpoint", "/s/ckpt_strategy.ckpt"])
    kw, _ = parallel_context(cfg, 8, 3)
    assert kw["strategy_ckpt_config"]["load_file"] == "/s/ckpt_strategy.ckpt"
    assert kw["strategy_ckpt_config"]["save_file"] == "/o/strategy/ckpt_strategy_rank_3.ckpt"
