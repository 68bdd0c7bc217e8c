"""The built-in prior's tokenizer knows every domain word; unknown prompts are rejected clearly."""

import pytest
from transformers import CLIPTokenizer

from dreamnfsd.data import NEGATIVE_PROMPT
from dreamnfsd.guidance.priors.builtin import VOCABULARY, build_tokenizer, validate_prompt


def test_every_word_is_one_known_token():
    tok = build_tokenizer()
    for word in VOCABULARY:
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, (word, ids)


def test_negative_prompt_tokenizes_without_unknowns():
    tok = build_tokenizer()
    ids = tok(NEGATIVE_PROMPT).input_ids
    inner = ids[1:-1]
    assert tok.unk_token_id not in inner
    assert len(ids) <= tok.model_max_length
    validate_prompt(NEGATIVE_PROMPT)


def test_round_trip(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a purple torus, blurry").input_ids == tok("a purple torus, blurry").input_ids
    assert again.get_vocab() == tok.get_vocab()


def test_ids_stable_across_builds():
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_validate_prompt_rejects_unknown_words():
    validate_prompt("a red cube")
    with pytest.raises(ValueError) as err:
        validate_prompt("a wooden chair")
    msg = str(err.value)
    assert "\n" not in msg and "wooden" in msg and "chair" in msg
    assert all(w in msg for w in ("sphere", "torus", "purple", "gloomy"))
