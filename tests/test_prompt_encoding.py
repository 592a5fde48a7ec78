"""PromptEncoder: prompts -> (sequence, pooled) embeddings with the tokenizer + text encoder, and the two empty-prompt
conventions (Stable Diffusion 1.x/2.x encode ""; SDXL's force_zeros_for_empty_prompt uses zeros).

The expected values are computed here from the tokenizer and the encoder directly (pad to model_max_length, truncate,
last_hidden_state, CLIP's pooler_output = the final-token state), not from the code under test.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_edm.pipelines.prompt_encoding import (
    EMPTY_PROMPT_CONVENTIONS,
    PromptEmbeddings,
    PromptEncoder,
    check_context_width,
    check_empty_prompt,
    check_prompts,
)
from tiny_text_encoders import BOS, EOS, SEQUENCE_LENGTH, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_t5_encoder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def reference_encoding(tokenizer, encoder, prompts):
    """Tokenise by hand (<bos> ids <eos> padded with <eos> to the length, as CLIP does), then run the encoder."""
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: SEQUENCE_LENGTH - 2]
        row = [BOS, *ids, EOS]
        rows.append(row + [EOS] * (SEQUENCE_LENGTH - len(row)))
    output = encoder(torch.tensor(rows))
    return output.last_hidden_state, getattr(output, "pooler_output", None)


def test_clip_prompts_are_padded_to_the_tokenizer_length_and_encoded(tokenizer):
    encoder = tiny_clip_text_encoder()
    prompts = ["a handwritten 7", "seven", "a very long prompt that is much longer than sixteen tokens, surely"]
    embeddings = PromptEncoder(tokenizer, encoder).encode(prompts)
    embeds, pooled = reference_encoding(tokenizer, encoder, prompts)
    assert embeddings.embeds.shape == (3, SEQUENCE_LENGTH, 8)
    torch.testing.assert_close(embeddings.embeds, embeds)
    torch.testing.assert_close(embeddings.pooled, pooled)
    # CLIP's pooled vector is the final (end-of-text) token's state: the first eos of each row.
    eos_position = [min(len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1, SEQUENCE_LENGTH - 1) for p in prompts]
    torch.testing.assert_close(embeddings.pooled, embeds[torch.arange(3), eos_position])


def test_t5_has_no_pooled_vector(tokenizer):
    encoder = tiny_t5_encoder(d_model=12)
    prompt_encoder = PromptEncoder(tokenizer, encoder)
    embeddings = prompt_encoder.encode(["the digit seven", "3"])
    embeds, _ = reference_encoding(tokenizer, encoder, ["the digit seven", "3"])
    assert embeddings.pooled is None and prompt_encoder.hidden_size == 12
    torch.testing.assert_close(embeddings.embeds, embeds)
    assert prompt_encoder.empty(2).pooled is None


@pytest.mark.parametrize("encoder_factory", [tiny_clip_text_encoder, tiny_t5_encoder])
def test_empty_prompt_conventions(tokenizer, encoder_factory):
    encoder = encoder_factory()
    embeds, pooled = reference_encoding(tokenizer, encoder, [""])
    encoded = PromptEncoder(tokenizer, encoder, empty_prompt="encode").empty(3, dtype=torch.float64)
    assert encoded.embeds.dtype == torch.float64 and encoded.embeds.shape == (3, SEQUENCE_LENGTH, 8)
    for row in range(3):
        torch.testing.assert_close(encoded.embeds[row].float(), embeds[0])
        if pooled is not None:
            torch.testing.assert_close(encoded.pooled[row].float(), pooled[0])
    zeros = PromptEncoder(tokenizer, encoder, empty_prompt="zeros").empty(2)
    assert zeros.embeds.shape == (2, SEQUENCE_LENGTH, 8) and not zeros.embeds.any()
    assert (zeros.pooled is None) == (pooled is None)
    if pooled is not None:
        assert zeros.pooled.shape == (2, 8) and not zeros.pooled.any()


def test_caption_dropout_rows_and_repeats(tokenizer):
    prompt_encoder = PromptEncoder(tokenizer, tiny_clip_text_encoder())
    captions = prompt_encoder.encode(["one", "two", "three"])
    empty = prompt_encoder.empty(3)
    dropped = captions.where(torch.tensor([False, True, False]), empty)
    torch.testing.assert_close(dropped.embeds[1], empty.embeds[0])
    torch.testing.assert_close(dropped.pooled[1], empty.pooled[0])
    torch.testing.assert_close(dropped.embeds[[0, 2]], captions.embeds[[0, 2]])
    repeated = captions.repeat_interleave(2)
    assert len(repeated) == 6
    torch.testing.assert_close(repeated.embeds[2], captions.embeds[1])
    torch.testing.assert_close(repeated.embeds[3], captions.embeds[1])
    with pytest.raises(ValueError, match=r"3 captions, 2 decisions and 3 replacement rows"):
        captions.where(torch.tensor([False, True]), empty)
    with pytest.raises(ValueError, match=r"3 captions, 3 decisions and 2 replacement rows"):
        captions.where(torch.tensor([False, True, True]), prompt_encoder.empty(2))
    pair = empty.cat(captions)
    assert len(pair) == 6
    torch.testing.assert_close(pair.embeds[3:], captions.embeds)


def test_bad_settings_name_both_sides(tokenizer):
    with pytest.raises(ValueError, match=r"empty_prompt must be one of .*'encode'.*'zeros'.*got 'blank'"):
        PromptEncoder(tokenizer, tiny_clip_text_encoder(), empty_prompt="blank")
    with pytest.raises(ValueError, match=r"width 8 .* width 32"):
        PromptEncoder(tokenizer, tiny_clip_text_encoder()).check_fits(32, "the denoiser's UNet2DConditionModel")
    with pytest.raises(ValueError, match=r"model_max_length=16 .* max_position_embeddings=8"):
        PromptEncoder(tokenizer, tiny_clip_text_encoder(sequence_length=8))
    with pytest.raises(ValueError, match="pooled"):
        PromptEmbeddings(torch.zeros(1, 2, 3), torch.zeros(1, 3)).cat(PromptEmbeddings(torch.zeros(1, 2, 3)))


PROMPT_LIKE = st.one_of(
    st.text(max_size=8),
    st.lists(st.text(max_size=5), max_size=4),
    st.lists(st.one_of(st.text(max_size=3), st.integers(), st.none(), st.binary(max_size=2)), min_size=1, max_size=4),
    st.tuples(st.text(max_size=3), st.text(max_size=3)),
    st.integers(), st.none(), st.binary(max_size=3), st.floats(allow_nan=True),
)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(prompt=PROMPT_LIKE)
def test_check_prompts_contract(prompt):
    """A string or a non-empty list/tuple of strings is accepted as that list; anything else is refused naming it."""
    valid = isinstance(prompt, str) or (
        isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(p, str) for p in prompt)
    )
    if valid:
        assert check_prompts(prompt) == ([prompt] if isinstance(prompt, str) else list(prompt))
    else:
        with pytest.raises(ValueError, match="negative_prompt must be"):
            check_prompts(prompt, name="negative_prompt")


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(st.sampled_from(EMPTY_PROMPT_CONVENTIONS), st.text(max_size=6), st.none(), st.integers()))
def test_check_empty_prompt_contract(value):
    if value in EMPTY_PROMPT_CONVENTIONS:
        assert check_empty_prompt(value) == value
    else:
        with pytest.raises(ValueError, match="empty_prompt must be one of"):
            check_empty_prompt(value)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(width=st.integers(1, 64), expected=st.integers(1, 64))
def test_check_context_width_contract(width, expected):
    if width == expected:
        check_context_width(width, expected, source="prompt_embeds", target="the denoiser")
    else:
        with pytest.raises(ValueError, match=rf"prompt_embeds has width {width} but the denoiser reads .* width {expected}"):
            check_context_width(width, expected, source="prompt_embeds", target="the denoiser")
