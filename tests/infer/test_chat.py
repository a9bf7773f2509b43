"""Prompt templates wrap --prompt exactly as the finetune data wrapped the human turn."""
import os

import numpy as np
import pytest

from petrun.data.alpaca import tokenize_alpaca_record
from petrun.data.tokenizer import SentencePieceTokenizer
from petrun.errors import UserError
from petrun.infer.chat import default_template, encode_prompt, render

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tok():
    return SentencePieceTokenizer(os.path.join(REPO, "data", "demo", "tokenizer.model"))


@pytest.mark.parametrize("record", [
    {"instruction": "Give three tips for staying healthy.", "input": ""},
    {"instruction": "Translate the sentence.", "input": "The cat sat on the mat."},
])
def test_alpaca_prompt_is_the_training_sample_up_to_the_answer(tok, record):
    sample = tokenize_alpaca_record({**record, "output": "Sure, here it is."}, tok, 256)
    prompt = record if record["input"] else record["instruction"]
    ids = encode_prompt("alpaca", prompt, tok)
    assert sample.input_ids[:len(ids)] == ids
    # ... and the first supervised label is the token right after the prompt.
    assert int(np.flatnonzero(np.array(sample.labels) != -100)[0]) == len(ids)


def test_template_texts():
    assert render("glm2", "你好") == "[Round 1]\n\n问：你好\n\n答："
    assert render("vicuna", "hi").endswith(" USER: hi ASSISTANT:")
    assert render("alpaca", "hi").endswith("### Instruction:\nhi\n\n### Response: ASSISTANT:")
    assert render("none", "plain text") == "plain text"


def test_default_templates_follow_the_finetune_data():
    assert default_template("LlamaForCausalLM") == "alpaca"
    assert default_template("ChatGLM2ForConditionalGeneration", "ChatGLM2Tokenizer") == "glm2"
    # the bundled GLM2 demo data is the Llama-tokenized alpaca data
    assert default_template("ChatGLM2ForConditionalGeneration", "LlamaTokenizer") == "alpaca"
    assert default_template("GPT2LMHeadModel") == "none"


def test_unknown_template_is_a_user_error():
    with pytest.raises(UserError, match="unknown chat template 'chatml'") as err:
        render("chatml", "hi")
    assert "alpaca" in str(err.value) and err.value.key == "processor.tokenizer.chat_template"
