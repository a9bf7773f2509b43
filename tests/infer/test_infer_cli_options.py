"""predict/eval option mistakes through the real CLI: one message naming the option, a Fix line,
exit 2, and all of it before the config is read (no pre-flight line, no model loaded)."""
import pytest

from tests.conftest import run_cli

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"


def _refused(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "\nFix: " in r.stderr, out
    for needle in needles:
        assert needle in r.stderr, out
    # checked before anything is built: the pre-flight (first thing after the config) never ran
    assert "pre-flight" not in out and "loaded" not in out, out


@pytest.mark.parametrize("verb,args", [
    ("predict", ("--prompt", "hi", "--max-new-tokens", "2", "--resume")),
    ("predict", ("--prompt", "hi", "--resume", "/tmp/somewhere")),
    ("predict", ("--prompt", "hi", "--resume_training", "True")),
    ("eval", ("--resume",)),
    ("eval", ("--resume=output",)),
])
def test_resume_is_refused_outside_training(verb, args):
    r = run_cli(verb, "--config", CONFIG, *args)
    flag = next(a for a in args if a.startswith("--resume")).partition("=")[0]
    _refused(r, f"key '{flag}': unknown option for petrun {verb}", f"Fix: drop {flag}")


def test_resume_is_shown_only_by_the_training_verbs():
    for verb in ("predict", "eval"):
        r = run_cli(verb, "--help")
        assert r.returncode == 0 and "--resume" not in r.stdout, r.stdout
    for verb in ("finetune", "train"):
        r = run_cli(verb, "--help")
        assert r.returncode == 0, r.stderr
        assert "--resume [PATH]" in r.stdout and "--resume_training" in r.stdout, r.stdout


@pytest.mark.parametrize("args,message,fix", [
    (("--top-p", "2"), "key '--top-p': must be in (0, 1], got 2.0", "e.g. --top-p 0.9"),
    (("--top-p", "0"), "key '--top-p': must be in (0, 1], got 0.0", "e.g. --top-p 0.9"),
    (("--temperature", "0", "--do-sample"), "key '--temperature': must be > 0",
     "e.g. --temperature 0.7"),
    (("--max-new-tokens", "-1"), "key '--max-new-tokens': must be at least 1, got -1",
     "leave --max-new-tokens out"),
    (("--max-new-tokens", "0"), "key '--max-new-tokens': must be at least 1, got 0",
     "pass a positive number"),
    (("--top-k", "-1"), "key '--top-k': must be >= 0", "e.g. --top-k 50"),
    (("--repetition-penalty", "0"), "key '--repetition-penalty': must be > 0",
     "e.g. --repetition-penalty 1.1"),
])
def test_predict_flags_are_checked_first(args, message, fix):
    r = run_cli("predict", "--config", CONFIG, "--prompt", "hi", *args)
    _refused(r, message, fix)


def test_a_prompt_file_that_is_a_directory(tmp_path):
    r = run_cli("predict", "--config", CONFIG, "--prompt-file", tmp_path)
    _refused(r, f"{tmp_path}: key '--prompt-file': is a directory", "Fix: pass the file inside it")
    r = run_cli("predict", "--config", CONFIG, "--prompt-file", tmp_path / "missing.txt")
    _refused(r, "prompt file not found")


def test_eval_output_is_checked_first():
    _refused(run_cli("eval", "--config", CONFIG, "--output", "yaml"),
             "--output 'yaml' is not a known format", "Fix: use --output text or --output json")
