"""Every numeric option of ``diffusers-edm-train`` and ``diffusers-edm-posthoc-ema``, through its parser: a hostile
value (NaN, +/-inf, 0, negative, huge, not a number, empty) is either refused with a ``ValueError`` naming the option,
or parsed to a finite value in the range the option documents (issue 15, defect 3 and the contract of the tools)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from diffusers_edm.training import arguments, posthoc_ema
from diffusers_edm.option_types import parse_or_raise
from diffusers_edm.training.train import main
from tiny_training import tiny_args

INF = math.inf
MAX_EMA_STD = math.sqrt(1 / 12)  # Karras et al. 2024, Algorithm 2: the power-function profiles cover (0, sqrt(1/12))


# (kind, minimum, maximum, exclusive minimum, exclusive maximum), as each option's help documents it.
def real(lo=-INF, hi=INF, lo_open=False, hi_open=False):
    return ("real", lo, hi, lo_open, hi_open)


def integer(lo=-INF, hi=INF):
    return ("int", lo, hi, False, False)


TRAIN_OPTIONS = {
    "sigma_data": real(0, lo_open=True), "P_mean": real(), "P_std": real(0, lo_open=True),
    "num_train_timesteps": integer(2), "validation_split": real(0, 1, True, True),
    "classifier_sigma_min": real(0, lo_open=True), "classifier_sigma_max": real(0, lo_open=True),
    "validation_sigma_edges": real(0, lo_open=True), "validation_noise_draws": integer(1),
    "num_channels": ("choice", 1, 3, False, False), "num_classes": integer(1), "label_dropout": real(0, 1, False, True),
    "proportion_empty_prompts": real(0, 1, False, True),
    "resolution": integer(1), "dataloader_num_workers": integer(0), "shuffle_buffer": integer(1),
    "train_batch_size": integer(1),
    "max_train_steps": integer(1), "gradient_accumulation_steps": integer(1), "learning_rate": real(0, lo_open=True),
    "lr_rampup_kimg": real(0), "adam_beta1": real(0, 1, False, True), "adam_beta2": real(0, 1, False, True),
    "adam_epsilon": real(0, lo_open=True), "weight_decay": real(0), "max_grad_norm": real(0, lo_open=True),
    "ema_halflife_kimg": real(0), "ema_rampup_ratio": real(), "ema_stds": real(0, MAX_EMA_STD, True, True),
    "ema_snapshot_kimg": real(0, lo_open=True), "seed": integer(0, 2**32 - 1), "checkpointing_steps": integer(1),
    "checkpoints_total_limit": integer(1), "preemption_check_steps": integer(1), "logging_steps": integer(1),
    "validation_steps": integer(1),
    "num_validation_images": integer(1), "sample_steps": integer(1), "guidance_scale": real(),
    "lora_rank": integer(1), "lora_alpha": real(0, lo_open=True),
}
POSTHOC_OPTIONS = {"std": real(0, MAX_EMA_STD, True, True), "at_kimg": real(0), "max_profile_error": real(0, lo_open=True)}

HOSTILE = ["nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "0", "-0", "0.0", "-1", "-0.5", "1e-320", "0.5",
           "1", "2", "3", "1e300", "1e309", "-1e309", "99999999999999999999999", "4294967296", "abc", "", " ", "0x10",
           "1,2", "1.5", "none", "True"]


def parse_train(option: str, value: str) -> argparse.Namespace:
    if option == "ema_stds":  # its upper bound is checked with --ema_type power, after parsing (sigma_rel_to_gamma)
        return arguments.parse_args(["--output_dir", "unused", "--ema_type", "power", f"--{option}={value}"])
    return parse_or_raise(arguments.build_parser(), ["--output_dir", "unused", f"--{option}={value}"])


def parse_posthoc(option: str, value: str) -> argparse.Namespace:
    std = [] if option == "std" else ["--std", "0.1"]
    return parse_or_raise(posthoc_ema.build_parser(), ["--run_dir", "r", "--output_dir", "o", *std, f"--{option}={value}"])


def in_documented_range(value: object, spec: tuple) -> bool:
    kind, lo, hi, lo_open, hi_open = spec
    if kind == "choice":
        return value in (lo, hi)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not isinstance(value, int)):
        return False
    if not math.isfinite(value):
        return False
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


def assert_contract(parse, option: str, value: str, spec: tuple) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = getattr(parse(option, value), option)
    except ValueError as error:
        assert f"--{option}" in str(error), f"--{option}={value!r}: the message does not name the option: {error}"
        return
    except SystemExit as exit:  # argparse's own usage error (e.g. a value not among the choices)
        assert exit.code == 2 and f"--{option}" in stderr.getvalue(), (value, exit.code, stderr.getvalue())
        return
    values = parsed if isinstance(parsed, list) else [parsed]
    assert all(in_documented_range(v, spec) for v in values), f"--{option}={value!r} was accepted as {parsed!r}"


def test_the_tables_cover_every_numeric_option():
    for build, table in ((arguments.build_parser, TRAIN_OPTIONS), (posthoc_ema.build_parser, POSTHOC_OPTIONS)):
        typed = {action.dest for action in build()._actions if action.type is not None}
        assert typed == set(table)


@pytest.mark.parametrize("option", sorted(TRAIN_OPTIONS))
def test_train_options_refuse_or_keep_hostile_values_in_range(option):
    for value in HOSTILE:
        assert_contract(parse_train, option, value, TRAIN_OPTIONS[option])


@pytest.mark.parametrize("option", sorted(POSTHOC_OPTIONS))
def test_posthoc_ema_options_refuse_or_keep_hostile_values_in_range(option):
    for value in HOSTILE:
        assert_contract(parse_posthoc, option, value, POSTHOC_OPTIONS[option])


NUMBER_TEXT = st.one_of(
    st.sampled_from(HOSTILE),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=6),
)


@seed(15)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(sorted(TRAIN_OPTIONS)), value=NUMBER_TEXT)
def test_train_parser_contract_property(option, value):
    assert_contract(parse_train, option, value, TRAIN_OPTIONS[option])


@seed(15)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(sorted(POSTHOC_OPTIONS)), value=NUMBER_TEXT)
def test_posthoc_ema_parser_contract_property(option, value):
    assert_contract(parse_posthoc, option, value, POSTHOC_OPTIONS[option])


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("option,value", [("learning_rate", "inf"), ("lr_rampup_kimg", "nan"), ("max_grad_norm", "nan")])
def test_non_finite_options_of_the_issue_stop_the_command_before_any_work(tmp_path, tiny_config, option, value):
    # Each of these used to train a NaN model, export it and exit 0.
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as caught:
        main(tiny_args(out, tiny_config, "--max_train_steps", "2", f"--{option}", value))
    assert f"--{option}" in str(caught.value) and value in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize("stds", ["1e-320", "0.05,1e-200"])
def test_an_ema_std_too_small_for_its_exponent_is_named(stds):
    # Found by the property test: the exponent's sigma^-2 overflowed (OverflowError) instead of a ValueError.
    with pytest.raises(ValueError, match="--ema_stds: .*too small"):
        arguments.parse_args(["--output_dir", "unused", "--ema_type", "power", "--ema_stds", stds])


def test_num_channels_that_is_no_number_is_named():
    # Found by the property test: type=int made argparse exit with "invalid int value" and no ValueError.
    with pytest.raises(ValueError, match="--num_channels must be an integer"):
        arguments.parse_args(["--output_dir", "unused", "--num_channels", "nan"])


def test_posthoc_ema_command_names_a_non_finite_std(tmp_path):
    with pytest.raises(SystemExit, match="--std"):
        posthoc_ema.main(["--run_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--std", "nan"])
