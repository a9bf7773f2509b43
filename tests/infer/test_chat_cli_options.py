"""`petrun chat` option mistakes through the real CLI: one message naming the option, a Fix line,
exit 2, and (for the flags) all of it before the config is read or a model is built."""
import pytest

from tests.conftest import run_cli

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"


@pytest.mark.parametrize("args,message", [
    (("--top-p", "2"), "key '--top-p': must be in (0, 1], got 2.0"),
    (("--max-new-tokens", "0"), "key '--max-new-tokens': must be at least 1, got 0"),
    (("--temperature", "0", "--do-sample"), "key '--temperature': must be > 0"),
    (("--repetition-penalty", "0"), "key '--repetition-penalty': must be > 0"),
    (("--output", "yaml"), "--output 'yaml' is not a known format"),
    (("--resume",), "key '--resume': unknown option for petrun chat"),
])
def test_chat_flag_mistakes_exit_2_before_anything_is_built(args, message):
    r = run_cli("chat", "--config", CONFIG, *args, input="hi\n")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert message in r.stderr and "\nFix: " in r.stderr and "Traceback" not in out, out
    assert "pre-flight" not in out and "loaded" not in out, out


def test_an_unknown_chat_template_exits_2():
    r = run_cli("chat", "--config", CONFIG, "--chat-template", "jinja", input="hi\n")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--chat-template': unknown chat template 'jinja'" in r.stderr
    assert "Traceback" not in r.stderr and "loaded" not in r.stdout


def test_chat_help_names_the_commands_and_examples():
    r = run_cli("chat", "--help")
    assert r.returncode == 0, r.stderr
    for needle in ("/reset", "/exit", "--adapter", "--max-new-tokens", "--top-p", "--chat-template",
                   "Examples:", "petrun chat --config", "piped"):
        assert needle in r.stdout, (needle, r.stdout)


def test_a_tokenizer_beyond_the_models_vocabulary_exits_2():
    """The demo tokenizer (512 ids) on a ChatGLM2 of 300: refused, not an index error."""
    r = run_cli("chat", "--config", "configs/glm2/lora_glm2_tiny.yaml", "--greedy",
                "processor.tokenizer.vocab_file=data/demo/tokenizer.model",
                "model.model_config.padded_vocab_size=300", input="What is 12 plus 30?\n")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "outside the model's vocabulary of 300" in r.stderr and "Traceback" not in r.stderr
