"""doppel.transcript: how turns become model text, plain lines or a chat template, and their tokens."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from doppel.model import ModelManifest, Recipe
from doppel.tiny import tiny_model
from doppel.transcript import PLAIN_END, Encoded, Kind, Transcript, Turn, body, system_prompt
from support.chats import CHATML

torch.set_num_threads(1)


TEXTS = [
    "Bob: are you coming tonight?",
    "Alice: haha yes totally",
    "Carol: hey all",
    "<|im_start|>user\nBob: hi<|im_end|>\n<|im_start|>assistant\nAlice: yo<|im_end|>\n",
] * 20

PARTICIPANTS = ["Alice", "Bob", "Carol"]
TURNS = [Turn("Bob", "are you coming?"), Turn("Alice", "haha yes"), Turn("Carol", "me too")]
EOS = "<|endoftext|>"  # the tiny tokenizer's BOS and EOS


@pytest.fixture(scope="module")
def plain_tokenizer() -> Any:
    _, tokenizer = tiny_model(TEXTS, block_size=128)
    assert not getattr(tokenizer, "chat_template", None)
    return tokenizer


def with_template(tokenizer: Any, template: str) -> Any:
    t = copy.deepcopy(tokenizer)
    t.chat_template = template
    return t


@pytest.fixture(scope="module")
def chat_tokenizer(plain_tokenizer: Any) -> Any:
    return with_template(plain_tokenizer, CHATML)


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- system prompt -------------------------------------------------------------------------


def test_system_prompt_names_the_participants_once_each() -> None:
    assert system_prompt([]) == "A chat."
    assert system_prompt(["Alice"]) == "A chat with Alice."
    assert system_prompt(["Alice", "Bob"]) == "A chat between Alice and Bob."
    assert system_prompt(["Alice", "Bob", "Alice", "Carol"]) == "A chat between Alice, Bob and Carol."


def test_body_is_name_colon_text() -> None:
    assert body(Turn("Alice", "hi there")) == "Alice: hi there"


# --- plain turns, ended by EOS ("plain-eos", what a plain model is trained with) --------------


def test_plain_mode_renders_name_colon_text_turns_ended_by_eos(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"])
    assert t.kind == "plain-eos" and t.plain
    assert t.end == EOS == plain_tokenizer.eos_token
    assert t.header(PARTICIPANTS) == EOS  # the BOS: no window opens with a trained token
    assert t.turn(Turn("Alice", "haha yes")) == ("", "Alice: haha yes", EOS + "\n")
    assert t.turn(Turn("Bob", "hi")) == ("", "Bob: hi", EOS + "\n")
    assert t.text(TURNS, PARTICIPANTS) == f"{EOS}Bob: are you coming?{EOS}\nAlice: haha yes{EOS}\nCarol: me too{EOS}\n"
    assert t.text([], PARTICIPANTS) == EOS


def test_plain_prompt_asks_for_a_speaker_or_a_new_line(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"])
    text = f"{EOS}Bob: are you coming?{EOS}\nAlice: haha yes{EOS}\nCarol: me too{EOS}\n"
    assert t.prompt(TURNS, PARTICIPANTS, "Alice") == text + "Alice:"
    assert t.prompt(TURNS, PARTICIPANTS, "Bob") == text + "Bob:"
    assert t.prompt(TURNS, PARTICIPANTS) == text
    assert t.prompt([], PARTICIPANTS, "Alice") == f"{EOS}Alice:"


def test_plain_encode_turn_is_the_tokenised_turn_and_its_eos(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"])
    for turn in TURNS:
        e = t.encode_turn(turn)
        assert e == Encoded(ids(plain_tokenizer, f"{turn.speaker}: {turn.text}{EOS}\n"), 0)
        assert plain_tokenizer.decode(e.ids) == f"{turn.speaker}: {turn.text}{EOS}\n"
        assert e.ids[-2] == plain_tokenizer.eos_token_id  # one token, the one sampling stops at
    assert t.encode("Alice: hi") == ids(plain_tokenizer, "Alice: hi")


def test_a_multi_line_message_is_one_plain_turn(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"])
    turn = Turn("Alice", "line one\nline two\n\nBob said: hi")
    e = t.encode_turn(turn)
    assert plain_tokenizer.decode(e.ids) == f"Alice: line one\nline two\n\nBob said: hi{EOS}\n"
    assert e.n_head == 0 and e.ids.count(plain_tokenizer.eos_token_id) == 1 and e.ids[-2] == plain_tokenizer.eos_token_id
    assert t.prompt([turn], PARTICIPANTS, "Bob") == f"{EOS}Alice: line one\nline two\n\nBob said: hi{EOS}\nBob:"


def test_the_eos_text_inside_a_message_is_taken_out(plain_tokenizer: Any) -> None:
    """A turn ends at its own EOS only: a message quoting the token cannot end it early."""
    t = Transcript(plain_tokenizer, ["Alice"])
    assert t.turn(Turn("Alice", f"see {EOS}here")) == ("", "Alice: see here", EOS + "\n")
    assert t.encode_turn(Turn("Alice", f"a{EOS}")).ids.count(plain_tokenizer.eos_token_id) == 1


def test_a_plain_turn_spans_lines_and_stops_at_eos_or_a_line_opened_as_any_participant(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"])
    assert t.stops(["Bob", "Alice", "Bob"]) == (EOS, "\nBob:", "\nAlice:")
    everyone = ["Alice", "Bob"]
    assert t.one_turn(f" line one\nline two{EOS}\nBob: hi", everyone) == "line one\nline two"
    assert t.one_turn(" line one\nline two", everyone) == "line one\nline two"  # ran out of tokens
    assert t.one_turn(" line one\nBob: and I say\nAlice: no", everyone) == "line one"
    assert t.one_turn(" line one\nAlice: again", everyone) == "line one"
    assert t.one_turn(" ok Bob: is not a new line", everyone) == "ok Bob: is not a new line"
    assert t.one_turn(f" done{EOS}", everyone) == "done"


# --- the old plain lines ("plain": models published before "plain-eos") ---------------------


def test_old_plain_models_render_name_colon_text_lines(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice"], "plain")
    assert t.kind == "plain" and t.plain
    assert t.end == "\n" == PLAIN_END
    assert t.header(PARTICIPANTS) == EOS
    assert t.turn(Turn("Alice", "haha yes")) == ("", "Alice: haha yes", "\n")
    text = f"{EOS}Bob: are you coming?\nAlice: haha yes\nCarol: me too\n"
    assert t.text(TURNS, PARTICIPANTS) == text
    assert t.prompt(TURNS, PARTICIPANTS, "Alice") == text + "Alice:"
    assert t.prompt(TURNS, PARTICIPANTS) == text
    for turn in TURNS:
        assert t.encode_turn(turn) == Encoded(ids(plain_tokenizer, f"{turn.speaker}: {turn.text}\n"), 0)
    assert t.stops(["Bob"]) == (PLAIN_END, "\nBob:")
    assert t.one_turn(" two\nlines", ["Alice", "Bob"]) == "two"
    assert t.one_turn(f" done{EOS}more", ["Bob"]) == "done"


# --- which kind ------------------------------------------------------------------------------


def test_a_tokenizer_without_an_eos_token_falls_back_to_old_plain_lines(plain_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(plain_tokenizer)
    tokenizer.eos_token = None
    assert tokenizer.eos_token is None
    assert Transcript(tokenizer, ["Alice"]).kind == "plain"
    with pytest.raises(ValueError, match="no EOS token"):
        Transcript(tokenizer, ["Alice"], "plain-eos")


def test_a_given_kind_is_rendered_whatever_the_tokenizer_would_pick(plain_tokenizer: Any, chat_tokenizer: Any) -> None:
    assert Transcript(chat_tokenizer, ["Alice"], "plain-eos").text(TURNS[:1], PARTICIPANTS) == f"{EOS}Bob: are you coming?{EOS}\n"
    assert Transcript(chat_tokenizer, ["Alice"], "plain").text(TURNS[:1], PARTICIPANTS) == f"{EOS}Bob: are you coming?\n"
    chat = Transcript(chat_tokenizer, ["Alice"], "chat")
    assert chat.kind == "chat" and chat.text(TURNS, PARTICIPANTS) == Transcript(chat_tokenizer, ["Alice"]).text(TURNS, PARTICIPANTS)
    with pytest.raises(ValueError, match="no chat template"):
        Transcript(plain_tokenizer, ["Alice"], "chat")
    with pytest.raises(ValueError, match="unknown transcript kind"):
        Transcript(plain_tokenizer, ["Alice"], "lines")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["plain", "plain-eos", "chat"])
def test_a_manifest_records_the_kind_and_old_manifests_still_load(kind: Kind, chat_tokenizer: Any) -> None:
    recipe = Recipe(dataset_id="d", speakers=["Alice"], base_model="tiny", method="lora", preset="default", model_name="m")
    manifest = ModelManifest(id="m", name="m", base_model="tiny", base_source="registry:tiny", method="lora",
                             transcript=kind, speakers=["Alice"], participants=PARTICIPANTS, dataset_id="d",
                             run_id="r", recipe=recipe)
    stored = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert stored.transcript == kind
    assert Transcript(chat_tokenizer, stored.speakers, stored.transcript).kind == kind


def test_trains_only_chosen_speakers(plain_tokenizer: Any) -> None:
    t = Transcript(plain_tokenizer, ["Alice", "Carol"])
    assert [t.trains(x) for x in TURNS] == [False, True, True]
    assert Transcript(plain_tokenizer, []).trains(TURNS[1]) is False


# --- chat template -------------------------------------------------------------------------


def test_chat_mode_roles(chat_tokenizer: Any) -> None:
    t = Transcript(chat_tokenizer, ["Alice"])
    assert t.kind == "chat"
    assert t.role("Alice") == "assistant"
    assert t.role("Bob") == "user"
    assert t.role("Carol") == "user"
    group = Transcript(chat_tokenizer, ["Alice", "Carol"])
    assert [group.role(x.speaker) for x in TURNS] == ["user", "assistant", "assistant"]


def test_chat_text_is_the_template_applied_to_the_messages(chat_tokenizer: Any) -> None:
    t = Transcript(chat_tokenizer, ["Alice"])
    messages = [
        {"role": "system", "content": system_prompt(PARTICIPANTS)},
        {"role": "user", "content": "Bob: are you coming?"},
        {"role": "assistant", "content": "Alice: haha yes"},
        {"role": "user", "content": "Carol: me too"},
    ]
    expected = chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert t.text(TURNS, PARTICIPANTS) == expected
    assert expected == (
        "<|im_start|>system\nA chat between Alice, Bob and Carol.<|im_end|>\n"
        "<|im_start|>user\nBob: are you coming?<|im_end|>\n"
        "<|im_start|>assistant\nAlice: haha yes<|im_end|>\n"
        "<|im_start|>user\nCarol: me too<|im_end|>\n"
    )
    assert t.header(PARTICIPANTS) == "<|im_start|>system\nA chat between Alice, Bob and Carol.<|im_end|>\n"
    assert t.turn(Turn("Alice", "x")) == ("<|im_start|>assistant\n", "Alice: x", "<|im_end|>\n")
    assert t.turn(Turn("Bob", "y")) == ("<|im_start|>user\n", "Bob: y", "<|im_end|>\n")


def test_chat_end_and_prompt(chat_tokenizer: Any) -> None:
    t = Transcript(chat_tokenizer, ["Alice"])
    assert t.end == "<|im_end|>"
    text = t.text(TURNS, PARTICIPANTS)
    assert t.prompt(TURNS, PARTICIPANTS, "Alice") == text + "<|im_start|>assistant\nAlice:"
    assert t.prompt(TURNS, PARTICIPANTS, "Alice").endswith("<|im_start|>assistant\nAlice:")
    assert t.prompt(TURNS, PARTICIPANTS, "Bob") == text + "<|im_start|>user\nBob:"
    # no speaker: the assistant's header, and the model writes the name
    assert t.prompt(TURNS, PARTICIPANTS) == text + "<|im_start|>assistant\n"


def test_a_chat_turn_stops_at_the_end_marker_or_a_line_opened_as_any_participant(chat_tokenizer: Any) -> None:
    chat = Transcript(chat_tokenizer, ["Alice"])
    assert chat.stops(["Alice", "Bob", "Alice"]) == ("<|im_end|>", "\nAlice:", "\nBob:")
    assert chat.one_turn(" yes totally\nBob: ok\nAlice: no", ["Alice", "Bob"]) == "yes totally"
    assert chat.one_turn(" two\nlines<|im_end|>\n<|im_start|>user", ["Alice", "Bob"]) == "two\nlines"
    assert chat.one_turn(" Bob: is not a new line", ["Alice", "Bob"]) == "Bob: is not a new line"
    assert chat.one_turn(f" done{EOS}more", ["Bob"]) == "done"
    assert chat.turn(Turn("Alice", "a\nb")) == ("<|im_start|>assistant\n", "Alice: a\nb", "<|im_end|>\n")


def test_chat_encode_turn_head_is_exactly_the_role_header(chat_tokenizer: Any) -> None:
    t = Transcript(chat_tokenizer, ["Alice"])
    for turn, role in ((Turn("Alice", "haha yes"), "assistant"), (Turn("Bob", "are you coming?"), "user")):
        e = t.encode_turn(turn)
        head = ids(chat_tokenizer, f"<|im_start|>{role}\n")
        rest = ids(chat_tokenizer, f"{turn.speaker}: {turn.text}<|im_end|>\n")
        assert e.n_head == len(head) > 0
        assert e.ids == head + rest
        assert chat_tokenizer.decode(e.ids[: e.n_head]) == f"<|im_start|>{role}\n"
        assert chat_tokenizer.decode(e.ids[e.n_head :]) == f"{turn.speaker}: {turn.text}<|im_end|>\n"


# --- templates that are not a concatenation of their messages ------------------------------

LAST_ONLY = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
NO_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
)
# every message is rendered the same way, except that the last one is marked: earlier turns change
MARKS_LAST = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if loop.last %}{{ ' [last]' }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
)
# the assistant's turns are rendered, the user's dropped
DROPS_USER = (
    "{% for message in messages %}{% if message['role'] != 'user' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
)

# consecutive messages of one role are merged into one block: each role alone renders fine, a run does not
MERGES_RUNS = (
    "{% for m in messages %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != m['role'] %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% else %}{{ '\n' }}{% endif %}{{ m['content'] }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != m['role'] %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
)


def test_merging_template_renders_single_messages_like_chatml(plain_tokenizer: Any) -> None:
    """MERGES_RUNS passes the one-message-per-role probe; only the whole-conversation check rejects it."""
    tokenizer = with_template(plain_tokenizer, MERGES_RUNS)
    one = [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]
    assert tokenizer.apply_chat_template(one, tokenize=False) == with_template(
        plain_tokenizer, CHATML
    ).apply_chat_template(one, tokenize=False)


@pytest.mark.parametrize("template", [LAST_ONLY, NO_SYSTEM, MARKS_LAST, DROPS_USER, MERGES_RUNS])
def test_templates_that_are_not_a_concatenation_fall_back_to_plain(plain_tokenizer: Any, template: str) -> None:
    tokenizer = with_template(plain_tokenizer, template)
    t = Transcript(tokenizer, ["Alice"])
    assert t.kind == "plain-eos"
    assert t.end == EOS
    assert t.header(PARTICIPANTS) == EOS
    assert t.text(TURNS, PARTICIPANTS) == f"{EOS}Bob: are you coming?{EOS}\nAlice: haha yes{EOS}\nCarol: me too{EOS}\n"
    assert t.encode_turn(Turn("Alice", "hi")).n_head == 0


def test_a_well_behaved_template_of_the_same_shape_is_used(plain_tokenizer: Any) -> None:
    """Control for the fallbacks above: the same shape of template, well behaved, is used."""
    tokenizer = with_template(
        plain_tokenizer,
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}",
    )
    assert Transcript(tokenizer, ["Alice"]).kind == "chat"
