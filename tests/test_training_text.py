"""Text-conditional training (``--caption_column``, issue 16): captions drawn per example and step, caption dropout
drawn anew every step (Ho & Salimans 2022, Algorithm 1: one Bernoulli(p) decision per example and step), the caption
column's contract, the embedding cache, the local tokenizer and text encoder, both cross-attention backbones under the
four preconditionings (Karras et al. 2022, Table 1), latent training through a VAE with ``latents_mean`` /
``latents_std``, the exported ``EDMTextToImagePipeline`` with its card, and an exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_edm.pipelines.prompt_encoding import PromptEncoder
from diffusers_edm.training.captions import (
    CaptionConditioner,
    build_local_text_encoder,
    build_local_tokenizer,
    check_caption_column,
    load_text_encoder,
)
from diffusers_edm.training.data import DIGIT_WORDS, embedded_digits_dataset
from diffusers_edm.training.train import main
from tiny_training import reset_accelerate_state

CAPTIONS = ["a handwritten 7", "the digit seven", "seven", "a 3", "number three", "zero"]


def prompt_encoder(empty_prompt: str = "encode", seed: int = 0) -> PromptEncoder:
    tokenizer = build_local_tokenizer(CAPTIONS)
    return PromptEncoder(tokenizer, build_local_text_encoder(tokenizer, seed), empty_prompt)


def binomial_bound(n: int, p: float) -> float:
    """Four standard deviations of a Binomial(n, p) count: a fair draw leaves it with probability < 1e-4."""
    return 4.0 * math.sqrt(n * p * (1.0 - p))


def rows_equal(embeds: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Which of ``embeds``' rows (B, L, C) equal ``row`` (L, C) exactly."""
    return (embeds == row).flatten(1).all(dim=1)


# ------------------------------------------------------------------------------------------------ embedded text task
def test_embedded_digits_carry_several_captions_naming_their_label():
    dataset = embedded_digits_dataset()
    assert "text" in dataset.column_names
    rows = dataset.select(range(30))
    for label, captions in zip(rows["label"], rows["text"]):
        assert len(captions) >= 5 and len(set(captions)) == len(captions)
        # every caption names the digit, as a numeral or a word, and no other digit
        for caption in captions:
            words = caption.split()
            assert str(label) in words or DIGIT_WORDS[label] in words, caption
            others = {str(d) for d in range(10) if d != label} | {w for d, w in enumerate(DIGIT_WORDS) if d != label}
            assert not others & set(words), caption
    assert rows["text"] == embedded_digits_dataset().select(range(30))["text"]  # deterministic


# ------------------------------------------------------------------------------------------------ local text encoder
def test_local_tokenizer_and_text_encoder_are_deterministic_and_keep_caption_words_whole():
    first, second = build_local_tokenizer(CAPTIONS), build_local_tokenizer(list(CAPTIONS))
    assert first.get_vocab() == second.get_vocab()
    ids = first("the digit seven").input_ids
    # <|startoftext|> the digit seven <|endoftext|>: each caption word is a single token
    assert first.convert_ids_to_tokens(ids) == ["<|startoftext|>", "the</w>", "digit</w>", "seven</w>", "<|endoftext|>"]
    assert len(first("an unseen word").input_ids) > 2  # other text still tokenizes (by bytes)
    a, b, c = (build_local_text_encoder(first, seed) for seed in (3, 3, 4))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    before = torch.random.get_rng_state()
    build_local_text_encoder(first, 5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's RNG is not advanced


def test_text_encoder_is_loaded_as_clip_or_t5_by_its_config_frozen_in_the_training_dtype(tmp_path):
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_local_tokenizer(CAPTIONS)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    build_local_text_encoder(tokenizer, 0).save_pretrained(tmp_path / "clip")
    T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(
        tmp_path / "t5"
    )
    _, clip = load_text_encoder(str(tmp_path / "clip"), str(tmp_path / "tokenizer"), torch.bfloat16)
    loaded_tokenizer, t5 = load_text_encoder(str(tmp_path / "t5"), str(tmp_path / "tokenizer"), torch.float32)
    assert type(clip).__name__ == "CLIPTextModel" and clip.dtype == torch.bfloat16
    assert type(t5).__name__ == "T5EncoderModel" and t5.dtype == torch.float32
    assert not any(p.requires_grad for p in [*clip.parameters(), *t5.parameters()]) and not t5.training
    assert loaded_tokenizer("seven").input_ids == tokenizer("seven").input_ids
    T5Config().save_pretrained(tmp_path / "t5")  # still a T5; now a BERT config is refused, naming it
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match="'bert'.*CLIP text model or a T5 encoder"):
        load_text_encoder(str(tmp_path / "bert"), None, torch.float32)


# ------------------------------------------------------------------------------------------------ caption column
def test_a_column_of_strings_or_lists_of_strings_is_accepted():
    dataset = datasets.Dataset.from_dict({"text": ["one", "two", "one"]})
    assert check_caption_column(dataset, "text") == (["one", "two"], ["one", "two"])
    dataset = datasets.Dataset.from_dict({"text": [["b", "a"], ["a"], ["c", "b"]]})
    assert check_caption_column(dataset, "text") == (["b", "a", "c"], ["b", "a", "c"])


NOT_A_STRING = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())


@settings(max_examples=30, deadline=None)
@given(good=st.lists(st.text(max_size=5), max_size=4), bad=NOT_A_STRING, in_list=st.booleans())
def test_a_caption_column_holding_a_non_string_is_refused_naming_column_row_and_type(good, bad, in_list):
    if bad is None:  # a null among strings (Arrow allows it in a string column): the first bad row is the last
        values = [*good, None] if not in_list else [*([text] for text in good), ["fine", None]]
        bad_row = len(good)
    else:  # Arrow types a column by its values: a column of numbers, bad from row 0
        values = [bad if not in_list else [bad]] * (len(good) + 1)
        bad_row = 0
    dataset = datasets.Dataset.from_dict({"caption": values})
    with pytest.raises(ValueError) as error:
        check_caption_column(dataset, "caption")
    message = str(error.value)
    assert "'caption'" in message and f"row {bad_row}:" in message and type(bad).__name__ in message, message


def test_a_missing_or_empty_caption_is_refused():
    with pytest.raises(ValueError, match="'text' not in the data set"):
        check_caption_column(datasets.Dataset.from_dict({"caption": ["a"]}), "text")
    with pytest.raises(ValueError, match="row 1: .*an empty list"):
        check_caption_column(datasets.Dataset.from_dict({"text": [["a"], []]}), "text")


# ------------------------------------------------------------------------------------------------ draws and dropout
def test_each_example_draws_one_of_its_own_captions_uniformly_at_every_step():
    encoder = prompt_encoder()
    conditioner = CaptionConditioner(encoder, 0.0, torch.float32)
    options = [CAPTIONS[:3], CAPTIONS[3:5], CAPTIONS[5:]]
    reference = {caption: encoder.encode([caption]).embeds[0] for caption in CAPTIONS}
    counts = {caption: 0 for caption in CAPTIONS}
    steps = 300
    torch.manual_seed(0)
    for _ in range(steps):
        embeds = conditioner(options, "cpu").embeds
        for row, own in zip(embeds, options):
            matches = [caption for caption in CAPTIONS if torch.allclose(row, reference[caption], atol=1e-5)]
            assert len(matches) == 1 and matches[0] in own  # one of its own captions, never another example's
            counts[matches[0]] += 1
    for own in options:
        for caption in own:  # uniform over the example's captions: Binomial(steps, 1/n)
            assert abs(counts[caption] - steps / len(own)) <= binomial_bound(steps, 1 / len(own)), (caption, counts)


@pytest.mark.parametrize("empty_prompt", ["encode", "zeros"])
def test_caption_dropout_is_drawn_anew_every_step_at_rate_p(empty_prompt):
    p, batch, steps = 0.3, 16, 150
    encoder = prompt_encoder(empty_prompt)
    conditioner = CaptionConditioner(encoder, p, torch.float32)
    # the empty prompt by the convention: "" through the text encoder, or zeros (written here, not taken from the code)
    empty = encoder.encode([""]).embeds[0] if empty_prompt == "encode" else torch.zeros(16, 64)
    torch.manual_seed(1)
    dropped = torch.stack([rows_equal(conditioner([["seven"]] * batch, "cpu").embeds, empty) for _ in range(steps)])
    total = batch * steps
    assert abs(int(dropped.sum()) - total * p) <= binomial_bound(total, p)
    # The same caption (and the same example slot) is dropped at some steps and kept at others: a decision per step,
    # not one fixed per caption (as precomputed embeddings would have it).
    per_slot = dropped.float().mean(dim=0)
    assert bool(((per_slot > 0) & (per_slot < 1)).all())
    # Consecutive "epochs" (steps) of one slot agree about as often as two independent draws: p^2 + (1-p)^2.
    agreement = (dropped[1:] == dropped[:-1]).float().mean()
    expected = p**2 + (1 - p) ** 2
    assert abs(float(agreement) - expected) <= 4 * math.sqrt(expected * (1 - expected) / (total - batch))


def test_cached_embeddings_equal_the_uncached_ones_and_encode_each_caption_once():
    encoder = prompt_encoder()
    calls = []
    encode = encoder.encode
    encoder.encode = lambda prompts, *args, **kwargs: calls.append(list(prompts)) or encode(prompts, *args, **kwargs)
    cached = CaptionConditioner(encoder, 0.25, torch.float32, cache=True)
    uncached = CaptionConditioner(prompt_encoder(), 0.25, torch.float32, cache=False)
    options = [CAPTIONS[:3], CAPTIONS[3:], CAPTIONS[:1], CAPTIONS[2:4]]
    for step in range(12):
        torch.manual_seed(step)
        with_cache = cached(options, "cpu")
        torch.manual_seed(step)
        without = uncached(options, "cpu")
        torch.testing.assert_close(with_cache.embeds, without.embeds, rtol=0, atol=1e-6)
        torch.testing.assert_close(with_cache.pooled, without.pooled, rtol=0, atol=1e-6)
    encoded = [caption for call in calls for caption in call if caption != ""]
    assert sorted(encoded) == sorted(set(encoded))  # every caption encoded at most once


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--caption_column", "text", "--label_column", "label"], "pass one of them"),
        (["--text_encoder", "somewhere"], "--text_encoder applies to --caption_column"),
        (["--proportion_empty_prompts", "0.2"], "--proportion_empty_prompts applies to --caption_column"),
        (["--caption_column", "text", "--tokenizer", "somewhere"], "--tokenizer 'somewhere' needs --text_encoder"),
        (["--caption_column", "text", "--precond", "edm2"], "--precond 'edm2'"),
        (["--caption_column", "text", "--loss", "hybrid"], "--caption_column applies to --caption_column"),
        (["--caption_column", "text", "--task", "classifier", "--label_column", "label"], "pass one of them|--caption_column applies"),
        (["--caption_column", "text", "--guidance_scale", "2", "--proportion_empty_prompts", "0"], "--proportion_empty_prompts > 0"),
    ],
)
def test_text_options_are_refused_where_they_do_not_apply(extra, message):
    from diffusers_edm.training.arguments import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(["--output_dir", "unused", *extra])


def test_text_defaults_are_resolved():
    from diffusers_edm.training.arguments import parse_args

    args = parse_args(["--output_dir", "unused", "--caption_column", "text"])
    assert (args.proportion_empty_prompts, args.empty_prompt, args.cache_text_embeddings) == (0.1, "encode", False)


# ------------------------------------------------------------------------------------------------ training runs
TEXT_UNET = {
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
TEXT_PIXART = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}
LATENTS_MEAN, LATENTS_STD = [0.1, -0.2, 0.3, 0.0], [0.5, 1.5, 1.0, 2.0]
PROMPTS = ["a handwritten 7", "zero"]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict[str, Path]:
    """Backbone configs and a grayscale AutoencoderKL whose config has latents_mean / latents_std (SDXL-style)."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("text")
    (root / "unet.json").write_text(json.dumps(TEXT_UNET))
    (root / "pixart.json").write_text(json.dumps(TEXT_PIXART))
    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
    ).save_pretrained(root / "vae")
    return {"unet": root / "unet.json", "dit": root / "pixart.json", "vae": root / "vae"}


def text_args(output_dir: Path, files: dict[str, Path], backbone: str, precond: str, *extra: str) -> list[str]:
    """Two steps at batch 4 (8x8 pixels for the UNet; 8x8 images -> 4x4 latents for PixArt), no validation grids."""
    args = [
        "--output_dir", str(output_dir), "--caption_column", "text", "--precond", precond, "--backbone", backbone,
        "--backbone_config", str(files[backbone]), "--resolution", "8", "--train_batch_size", "4",
        "--max_train_steps", "2", "--checkpointing_steps", "1000", "--logging_steps", "1", "--validation_steps", "1000",
        "--num_validation_images", "2", "--sample_steps", "2", "--report_to", "none", "--validation_prompts", *PROMPTS,
    ]
    if backbone == "dit":
        args += ["--vae", str(files["vae"])]
    return [*args, *extra]


PRECOND_CLASS_NAMES = {"edm": "EDMPrecond", "vp": "VPPrecond", "ve": "VEPrecond", "iddpm": "IDDPMPrecond"}


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("precond", sorted(PRECOND_CLASS_NAMES))
@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_both_backbones_train_under_every_preconditioning_and_export_a_text_to_image_pipeline(
    tmp_path, text_files, backbone, precond
):
    from diffusers import DiffusionPipeline
    from PIL import Image

    out = tmp_path / "run"
    result = main(text_args(out, text_files, backbone, precond))
    model = result.model
    assert type(model).__name__ == PRECOND_CLASS_NAMES[precond]
    expected_backbone = "UNet2DConditionModel" if backbone == "unet" else "PixArtTransformer2DModel"
    assert type(model.backbone).__name__ == expected_backbone
    assert result.global_step == 2 and all(math.isfinite(loss) for loss in result.losses)
    if backbone == "dit":  # latent space of the VAE: 4 channels at half the resolution
        assert model.config.backbone_config["in_channels"] == 4 and model.config.backbone_config["sample_size"] == 4
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "EDMTextToImagePipeline" and pipe.config.empty_prompt == "encode"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and pipe.tokenizer("seven").input_ids
    if backbone == "dit":
        assert list(pipe.vae.config.latents_mean) == LATENTS_MEAN and list(pipe.vae.config.latents_std) == LATENTS_STD
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt=["seven"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all()
    # the grid: one row per validation prompt, one column per seed (2 images / 2 prompts = 1 seed), 8 px cells x8
    assert Image.open(out / "samples.png").size == (64, 2 * 64 + 2)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_exported_card_example_runs_with_the_runs_prompts_and_empty_prompt_convention(tmp_path, text_files):
    from test_model_cards import run_usage_example

    out = tmp_path / "run"
    main(text_args(
        out, text_files, "unet", "edm", "--hub_model_id", "someone/digits-text", "--guidance_scale", "2",
        "--empty_prompt", "zeros",
    ))
    from diffusers_edm import EDMTextToImagePipeline

    # the convention of the training's caption dropout is the one the pipeline's guidance uses
    assert EDMTextToImagePipeline.from_pretrained(out).config.empty_prompt == "zeros"
    card = (out / "README.md").read_text()
    assert "- text-to-image" in card and "- diffusers-edm" in card
    code, images = run_usage_example(card, "someone/digits-text", out)
    assert f"prompt={PROMPTS!r}" in code and "guidance_scale=2.0" in code and "num_inference_steps=2" in code
    assert len(images) == len(PROMPTS)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_text_encoder_narrower_than_the_cross_attention_is_refused_naming_both(tmp_path, text_files):
    config = tmp_path / "wide.json"
    config.write_text(json.dumps({**TEXT_UNET, "cross_attention_dim": 16}))
    args = text_args(tmp_path / "run", text_files, "unet", "edm", "--backbone_config", str(config))
    with pytest.raises(ValueError, match=r"width 64.*width 16"):
        main(args)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resumed_text_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, text_files):
    """Checkpoint at step 2 of 4, resume: the caption draws (CPU RNG) and the dropout (device RNG) continue as in
    the uninterrupted run, so every weight is equal."""
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--proportion_empty_prompts", "0.5"]
    whole = main(text_args(tmp_path / "whole", text_files, "unet", "edm", *common))
    reset_accelerate_state()
    main(text_args(tmp_path / "parts", text_files, "unet", "edm", *common, "--max_train_steps", "2"))
    reset_accelerate_state()
    resumed = main(text_args(tmp_path / "parts", text_files, "unet", "edm", *common, "--resume_from_checkpoint", "latest"))
    assert resumed.global_step == whole.global_step == 4
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("cache", [False, True])
def test_a_text_training_step_waits_for_the_device_only_to_draw_captions_on_the_cpu(tmp_path, text_files, cache):
    """The caption draw reads one CPU tensor (``torch.rand(B).tolist()``: captions are host strings, and the CPU RNG
    is the checkpointed one); the embeddings, the dropout, the loss and the update stay on the device."""
    from benchmarks.host_syncs import count_host_syncs
    from diffusers_edm.training.arguments import parse_args
    from diffusers_edm.training.train import Trainer

    extra = ["--cache_text_embeddings"] if cache else []
    trainer = Trainer(parse_args(text_args(tmp_path / "run", text_files, "unet", "edm", *extra)))
    trainer.setup()
    batches = iter(trainer.dataloader)
    trainer._train_step(next(batches))  # the first step fills the caches (empty prompt, caption embeddings)
    batch = next(batches)
    with count_host_syncs() as syncs:
        trainer._train_step(batch)
    assert [call.name for call in syncs.calls] == ["Tensor.tolist"] and syncs.calls_from("captions.py") == syncs.calls


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_pretrained_t5_encoder_and_tokenizer_are_used_frozen_and_exported(tmp_path, text_files):
    """``--text_encoder`` (a local T5 encoder: no pooled output) and ``--tokenizer``: the backbone's cross-attention
    takes the encoder's width (d_model), the encoder is not trained and the pipeline carries both."""
    from diffusers import DiffusionPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_local_tokenizer(["a handwritten 7", "zero"])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    t5.save_pretrained(tmp_path / "t5")
    out = tmp_path / "run"
    result = main(text_args(
        out, text_files, "unet", "edm", "--text_encoder", str(tmp_path / "t5"), "--tokenizer", str(tmp_path / "tokenizer")
    ))
    assert result.model.backbone.config.cross_attention_dim == 16
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe.text_encoder).__name__ == "T5EncoderModel"
    for (name, trained), original in zip(pipe.text_encoder.state_dict().items(), t5.state_dict().values()):
        assert torch.equal(trained, original), name
