"""Issue 19: a run records the chat template its training data was rendered with, and predict,
chat and export speak it with no flag. Raw chat data (OpenAI messages) on a Llama config trains
with vicuna although the family's default is alpaca; raw alpaca records keep alpaca.

Oracles: the vicuna_v1.1 and Alpaca prompts written out by hand below, encoded with the
sentencepiece library itself (not petrun's tokenizer or renderer), and the exported Jinja template
rendered with jinja2 (what transformers' apply_chat_template runs)."""
import json

import pytest

from tests.conftest import run_cli
from tests.integration.test_chat_data_cli import CONFIG, TOKENIZER, _chats

pytestmark = pytest.mark.slow   # two 1-step finetunes, then predict/chat/export processes

Q = "What is 3 plus 4?"
HEAD = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. ")
VICUNA = HEAD + f"USER: {Q} ASSISTANT:"
ALPACA = (HEAD + "USER: Below is an instruction that describes a task. Write a response that "
          f"appropriately completes the request.\n\n### Instruction:\n{Q}\n\n### Response: "
          "ASSISTANT:")


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


def _ids(text: str) -> list[int]:
    import sentencepiece as spm
    return [1] + spm.SentencePieceProcessor(model_file=str(TOKENIZER)).encode(text)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{'messages': adapter folder, 'alpaca': adapter folder}, each from a 1-step finetune."""
    root = tmp_path_factory.mktemp("recorded")
    alpaca = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)}
              for i in range(8)]
    out = {}
    for name, rows in (("messages", _chats(8)), ("alpaca", alpaca)):
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run = root / f"run_{name}"
        _ok(run_cli("finetune", "--config", CONFIG, "--output_dir", run, "--train_dataset_dir",
                    data, "runner_config.stop_step=1", env={"PETRUN_CACHE_DIR": str(root / "c")}))
        out[name] = run / "checkpoint" / "rank_0"
    return out


def _predict(*args) -> dict:
    return json.loads(_ok(run_cli("predict", "--greedy", "--max-new-tokens", "1", "--no-cache",
                                  "--output", "json", "--prompt", Q, *args)))


def test_the_checkpoint_manifest_records_the_template(runs):
    for name, want in (("messages", "vicuna"), ("alpaca", "alpaca")):
        folder = runs[name]
        stem = (folder / "latest").read_text().strip()
        assert json.loads((folder / f"{stem}.json").read_text())["chat_template"] == want


def test_predict_speaks_the_recorded_template_without_a_flag(runs):
    got = _predict("--config", CONFIG, "--adapter", runs["messages"])
    assert got["template"] == "vicuna"
    assert got["results"][0]["prompt_ids"] == _ids(VICUNA)
    got = _predict("--config", CONFIG, "--adapter", runs["alpaca"])
    assert got["template"] == "alpaca"
    assert got["results"][0]["prompt_ids"] == _ids(ALPACA)


def test_the_runs_own_config_yaml_also_carries_it(runs):
    got = _predict("--config", runs["messages"] / "config.yaml")
    assert got["template"] == "vicuna" and got["results"][0]["prompt_ids"] == _ids(VICUNA)


def test_an_explicit_choice_wins_over_the_record(runs):
    got = _predict("--config", CONFIG, "--adapter", runs["messages"], "--chat-template", "alpaca")
    assert got["template"] == "alpaca" and got["results"][0]["prompt_ids"] == _ids(ALPACA)
    got = _predict("--config", CONFIG, "--adapter", runs["alpaca"],
                   "processor.tokenizer.chat_template=vicuna")
    assert got["template"] == "vicuna" and got["results"][0]["prompt_ids"] == _ids(VICUNA)


def test_chat_speaks_the_recorded_template(runs):
    r = run_cli("chat", "--config", CONFIG, "--adapter", runs["messages"], "--greedy",
                "--max-new-tokens", "1", "--output", "json", input=Q + "\n")
    turn = json.loads(_ok(r).splitlines()[0])
    assert turn["new_ids"] == _ids(VICUNA)


@pytest.mark.parametrize("name,expected", [("messages", VICUNA), ("alpaca", ALPACA)])
def test_export_writes_the_recorded_template(runs, tmp_path, name, expected):
    import jinja2

    out = tmp_path / "hf"
    _ok(run_cli("export", "--config", CONFIG, "--adapter", runs[name], "--output", out))
    cfg = json.loads((out / "tokenizer_config.json").read_text())

    def fail(message):
        raise AssertionError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(cfg["chat_template"]).render(
        messages=[{"role": "user", "content": Q}], add_generation_prompt=True,
        bos_token="<s>", eos_token="</s>", raise_exception=fail)
    assert text == "<s>" + expected
