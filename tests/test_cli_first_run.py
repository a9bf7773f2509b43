"""What a first-time user meets at the prompt: shell completion is there to install."""
from tests.conftest import run_cli


def test_shell_completion_is_available():
    r = run_cli("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert r.returncode == 0, r.stderr
    assert "_petrun_completion" in r.stdout
    assert "--install-completion" in run_cli("--help").stdout


def test_data_prepare_ends_with_the_command_that_uses_its_output(tmp_path):
    out = tmp_path / "demo.jsonl"
    r = run_cli("data", "prepare", "alpaca", "-i", "data/demo/alpaca_demo.json", "-o", out,
                "--config", "configs/llama2/lora_llama2_tiny.yaml")
    assert r.returncode == 0, r.stderr
    assert f"next: petrun finetune --config YOUR.yaml --train_dataset_dir {out}" in r.stdout


def test_every_run_verb_help_lists_mindformers_flags_and_examples():
    for verb in ("finetune", "train", "predict", "eval"):
        text = run_cli(verb, "--help", env={"COLUMNS": "200"}).stdout
        assert "--load_checkpoint" in text and "--use_parallel" in text, verb
        assert "Examples:" in text and f"petrun {verb} --config" in text, verb
    text = run_cli("run", "--help", env={"COLUMNS": "200"}).stdout   # passes flags to the verb
    assert "run_mindformer.py" in text and "petrun run --config" in text
