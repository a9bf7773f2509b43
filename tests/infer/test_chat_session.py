"""What a chat turn feeds the model, for every template: the tokens after an answer are those the
training data has there. Oracle: petrun.data.conversation.encode, which tokenizes training
conversations (MindFormers' rules), on the whole conversation."""
import pytest

from petrun.data.conversation import encode
from petrun.data.templates import TEMPLATES
from petrun.data.tokenizer import load_tokenizer
from petrun.infer.chat_session import next_turn_ids
from tests.conftest import ROOT

TURNS = [{"role": "user", "content": "What is 12 plus 30?"},
         {"role": "assistant", "content": "It is 42."},
         {"role": "user", "content": "And the plural of mouse?"},
         {"role": "assistant", "content": "Mice."}]
NEXT = "Thanks. Name a color."


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer({"vocab_file": str(ROOT / "data/demo/tokenizer.model")})


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("rounds", [1, 2])
def test_a_new_turn_continues_the_training_tokens(tokenizer, template, rounds):
    turns = TURNS[:2 * rounds]
    closed, _ = encode(template, turns, tokenizer)           # ends with the answer's eos
    assert closed[-1] == tokenizer.eos_id
    whole, _ = encode(template, turns + [{"role": "user", "content": NEXT}], tokenizer,
                      add_generation_prompt=True)
    tail = next_turn_ids(template, turns, NEXT, tokenizer)
    # The conversation's tokens up to the answer's own, then this turn's.
    assert whole == closed[:-1] + tail, template
    assert tokenizer.bos_id not in tail
