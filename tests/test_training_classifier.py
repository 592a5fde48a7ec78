"""``diffusers-edm-train --task classifier``: a noise-conditional classifier for classifier guidance (Dhariwal & Nichol
2021), trained by the same loop as the denoisers. Restated here, independently of the code:

- loss: cross-entropy ``-log softmax(logits)[c]`` of ``classifier(y + sigma n, sigma)``, averaged over the batch,
  ``ln sigma ~ N(P_mean, P_std^2)`` (EDM, Karras et al. 2022, section 5) clamped to the classifier's sigma range;
  draws from the global torch RNG, sigma first, then n;
- the held-out split is stratified: each class gives round(fraction * its size) images, fixed by the seed;
- accuracy per bucket: the fraction of held-out (image, noise draw) pairs classified right, sigma within the bucket;
- the export is the EMA classifier, loadable with ``NoiseConditionalClassifier.from_pretrained(output_dir)``, with a
  card whose example runs; a resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

import diffusers_edm.training.train as train_module
from benchmarks.host_syncs import count_host_syncs
from diffusers_edm import NoiseConditionalClassifier
from diffusers_edm.training.arguments import parse_args
from diffusers_edm.training.data import embedded_digits_dataset, held_out_split
from diffusers_edm.training.recipes import ClassifierRecipe
from tiny_training import reset_accelerate_state
from tiny_training import tiny_args as training_args

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TINY_CLASSIFIER = {
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
}
DEFAULT_EDGES = [0.002, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 80.0]


@pytest.fixture
def classifier_config(tmp_path) -> Path:
    path = tmp_path / "tiny_classifier.json"
    path.write_text(json.dumps(TINY_CLASSIFIER))
    return path


def classifier_args(output_dir: Path, config: Path, *extra: str) -> list[str]:
    """A 4-step classifier run at 8x8 on the digits, 5% held out (90 images), one noise draw per bucket."""
    return training_args(output_dir, config, "--task", "classifier", "--label_column", "label",
                         "--validation_split", "0.05", "--validation_noise_draws", "1", *extra)


def make_trainer(output_dir: Path, config: Path, *extra: str) -> train_module.Trainer:
    reset_accelerate_state()
    trainer = train_module.Trainer(parse_args(classifier_args(output_dir, config, *extra)))
    trainer.setup()
    return trainer


def python_blocks(card: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", card, flags=re.S))


# ------------------------------------------------------------------------------------------------ loss
def test_loss_is_the_cross_entropy_of_the_noised_images_on_the_same_draws(tmp_path, classifier_config):
    P_mean, P_std, sigma_max = -0.5, 1.5, 0.8  # a clamp that most draws above 0.8 hit
    trainer = make_trainer(tmp_path / "run", classifier_config, "--P_mean", str(P_mean), "--P_std", str(P_std),
                           "--classifier_sigma_max", str(sigma_max), "--train_batch_size", "32")
    batch = next(iter(trainer.dataloader))
    images, labels = batch["images"], batch["labels"]
    torch.manual_seed(11)
    loss, stats_ = trainer._loss(images, labels)

    torch.manual_seed(11)
    sigma = torch.exp(torch.randn(32) * P_std + P_mean).clamp(0.002, sigma_max)
    noise = torch.randn_like(images)
    assert (sigma == sigma_max).sum() >= 3  # the clamp is exercised
    model = trainer.unwrapped_model()
    with torch.no_grad():
        logits = model(images + sigma[:, None, None, None] * noise, sigma).logits.double()
    expected = (torch.logsumexp(logits, dim=1) - logits[torch.arange(32), labels]).mean()
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats_["log_sigma_mean"], sigma.log().mean())
    assert stats_["train_accuracy"] == (logits.argmax(1) == labels).float().mean()


def test_noise_levels_follow_edms_log_normal_clamped_to_the_range(tmp_path, classifier_config):
    P_mean, P_std, low, high = -1.2, 1.2, 0.05, 2.0
    trainer = make_trainer(tmp_path / "run", classifier_config, "--classifier_sigma_min", str(low),
                           "--classifier_sigma_max", str(high))
    torch.manual_seed(0)
    sigma = trainer.recipe.sample_sigma(40_000, torch.device("cpu")).double()
    assert sigma.min() == pytest.approx(low) and sigma.max() == pytest.approx(high)
    normal = stats.norm(P_mean, P_std)
    # The mass outside the range piles up on its edges; inside, ln sigma is N(P_mean, P_std^2).
    assert float((sigma <= low * (1 + 1e-6)).double().mean()) == pytest.approx(normal.cdf(math.log(low)), abs=0.006)
    assert float((sigma >= high * (1 - 1e-6)).double().mean()) == pytest.approx(normal.sf(math.log(high)), abs=0.006)
    inside = sigma[(sigma > low * (1 + 1e-6)) & (sigma < high * (1 - 1e-6))].log().numpy()
    truncated = stats.truncnorm((math.log(low) - P_mean) / P_std, (math.log(high) - P_mean) / P_std, P_mean, P_std)
    assert stats.kstest(inside, truncated.cdf).pvalue > 1e-3


def test_an_optimizer_step_makes_no_host_synchronisation(tmp_path, classifier_config):
    trainer = make_trainer(tmp_path / "run", classifier_config, "--max_grad_norm", "1.0")
    batches = iter(trainer.dataloader)
    trainer._train_step(next(batches))  # warm-up
    with count_host_syncs() as counter:
        for _ in range(3):
            trainer._train_step(next(batches))
    assert not counter.calls, counter.calls


# ------------------------------------------------------------------------------------------------ held-out split
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3])
def test_held_out_split_is_stratified_disjoint_and_fixed_by_the_seed(fraction):
    dataset = embedded_digits_dataset()
    labels = np.asarray(dataset["label"])
    train, held = held_out_split(dataset, fraction, seed=3, label_column="label")
    held_labels = np.asarray(held["label"])
    for label in range(10):
        assert (held_labels == label).sum() == round(fraction * (labels == label).sum())
    assert len(train) + len(held) == len(dataset)
    # Disjoint and complete: the images (as bytes) of both parts are those of the data set.
    key = lambda ds: sorted(np.asarray(image).tobytes() + bytes([label]) for image, label in zip(ds["image"], ds["label"]))  # noqa: E731
    assert key(dataset) == sorted(key(train) + key(held))
    again = held_out_split(dataset, fraction, seed=3, label_column="label")[1]
    other = held_out_split(dataset, fraction, seed=4, label_column="label")[1]
    assert key(again) == key(held) and key(other) != key(held)


# ------------------------------------------------------------------------------------------------ accuracy buckets
class ConstantPredictor(torch.nn.Module):
    """Predicts class 0 below sigma = 1 and class 1 from there on; records every sigma it sees."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, sample, sigma):
        self.seen.append(sigma.clone())
        logits = torch.zeros(sample.shape[0], 10)
        logits[torch.arange(sample.shape[0]), (sigma >= 1).long()] = 1.0

        class Output:
            pass

        output = Output()
        output.logits = logits
        return output


def test_bucket_accuracy_counts_each_held_out_image_and_draw_in_its_bucket(tmp_path, classifier_config):
    trainer = make_trainer(tmp_path / "run", classifier_config, "--validation_split", "0.1", "--validation_noise_draws", "3")
    predictor = ConstantPredictor()
    metrics = trainer.recipe.bucket_accuracy(predictor)
    held_labels = np.asarray(held_out_split(embedded_digits_dataset(), 0.1, 0, "label")[1]["label"])
    share = {c: float((held_labels == c).mean()) for c in (0, 1)}
    assert metrics["num_images"] == len(held_labels) and metrics["noise_draws"] == 3
    assert [(b["sigma_min"], b["sigma_max"]) for b in metrics["buckets"]] == list(zip(DEFAULT_EDGES, DEFAULT_EDGES[1:]))
    for bucket in metrics["buckets"]:
        assert bucket["count"] == 3 * len(held_labels)
        expected = share[0] if bucket["sigma_max"] <= 1 else share[1]
        assert bucket["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean([b["accuracy"] for b in metrics["buckets"]]))
    # Every call holds each bucket's sigmas, in order, within the bucket's edges.
    for sigma in predictor.seen:
        rows = sigma.reshape(len(DEFAULT_EDGES) - 1, -1)
        for row, low, high in zip(rows, DEFAULT_EDGES, DEFAULT_EDGES[1:]):
            assert (row >= low * (1 - 1e-6)).all() and (row <= high * (1 + 1e-6)).all()


# ------------------------------------------------------------------------------------------------ end to end
def test_classifier_run_writes_accuracy_json_and_a_loadable_ema_classifier_with_a_runnable_card(tmp_path, classifier_config):
    out = tmp_path / "run"
    result = train_module.main(classifier_args(out, classifier_config, "--report_to", "tensorboard"))
    assert result.global_step == 4 and all(np.isfinite(result.losses))
    for path in (out / "accuracy" / "step-0000003.json", out / "accuracy.json"):
        report = json.loads(path.read_text())
        assert len(report["buckets"]) == 7 and report["num_images"] == 90
        assert all(0.0 <= b["accuracy"] <= 1.0 and b["count"] == 90 for b in report["buckets"])
        assert 0.0 <= report["accuracy"] <= 1.0
    assert json.loads((out / "accuracy.json").read_text())["step"] == 4
    assert list((out / "logs").rglob("events.out.tfevents.*"))

    classifier = NoiseConditionalClassifier.from_pretrained(out)
    assert classifier.config.num_classes == 10 and classifier.config.in_channels == 1
    assert classifier.sample_size == (8, 8) and classifier.config.pooling == "attention"
    # the exported weights are the EMA weights, not the raw ones
    exported = load_file(out / "diffusion_pytorch_model.safetensors")
    ema = dict(zip(result.model.state_dict().keys(), result.ema.shadow_params))
    torch.testing.assert_close(exported["conv_in.weight"], ema["conv_in.weight"])
    assert not torch.equal(exported["conv_in.weight"], result.model.state_dict()["conv_in.weight"])

    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "- classifier-guidance" in card and "4 optimizer steps" in card
    assert "| [0.002, 0.05) |" in card
    namespace: dict = {"__name__": "__model_card__"}
    exec(compile(python_blocks(card), "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (2, 10)
    torch.testing.assert_close(namespace["probabilities"].sum(-1), torch.ones(2))
    assert namespace["gradient"].shape == (2, 1, 8, 8) and torch.isfinite(namespace["gradient"]).all()


def test_latent_classifier_sees_vae_latents(tmp_path, classifier_config):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "latent"
    train_module.main(classifier_args(out, classifier_config, "--vae", str(tmp_path / "vae"), "--max_train_steps", "2",
                                      "--classifier_pooling", "mean"))
    classifier = NoiseConditionalClassifier.from_pretrained(out)
    assert classifier.config.in_channels == 4 and classifier.sample_size == (4, 4) and classifier.config.pooling == "mean"
    assert 0.0 <= json.loads((out / "accuracy.json").read_text())["accuracy"] <= 1.0
    card = (out / "README.md").read_text()
    assert "latents" in card
    namespace: dict = {"__name__": "__model_card__"}
    exec(compile(python_blocks(card), "README.md", "exec"), namespace)
    assert namespace["gradient"].shape == (2, 4, 4, 4)


def test_interrupted_and_resumed_classifier_run_equals_an_uninterrupted_one(tmp_path, classifier_config):
    """Stopped after the checkpoint at step 3 and resumed to step 6: the same weights, EMA and accuracy as 6 steps
    straight (validation at steps 2 and 4, so validation runs on both sides of the checkpoint)."""
    extra = ["--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_steps", "2", "--random_flip"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_module.main(classifier_args(straight, classifier_config, *extra))
    reset_accelerate_state()
    train_module.main(classifier_args(interrupted, classifier_config, *extra, "--max_train_steps", "3"))
    reset_accelerate_state()
    result = train_module.main(classifier_args(interrupted, classifier_config, *extra, "--resume_from_checkpoint", "latest"))
    assert result.global_step == 6
    for relative in ("checkpoint-6/model.safetensors", "checkpoint-6/training_state.safetensors",
                     "diffusion_pytorch_model.safetensors"):
        a, b = load_file(straight / relative), load_file(interrupted / relative)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{relative}: {key} differs after resume"
    assert (json.loads((straight / "accuracy.json").read_text()) == json.loads((interrupted / "accuracy.json").read_text()))
    assert (json.loads((straight / "accuracy" / "step-0000004.json").read_text())
            == json.loads((interrupted / "accuracy" / "step-0000004.json").read_text()))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--validation_split", "0"], "--validation_split"),
        (["--validation_split", "1"], "--validation_split"),
        (["--validation_split", "-0.2"], "--validation_split"),
        (["--loss", "hybrid"], "--loss hybrid"),
        (["--precond", "vp"], "--precond vp"),
        (["--label_dropout", "0.1"], "--label_dropout"),
        (["--loss_reduction", "sum"], "--loss_reduction"),
        (["--classifier_sigma_min", "5", "--classifier_sigma_max", "1"], "--classifier_sigma_min"),
        (["--validation_sigma_edges", "0.1", "0.05", "1"], "--validation_sigma_edges"),
        (["--validation_sigma_edges", "0.1"], "--validation_sigma_edges"),
        (["--validation_noise_draws", "0"], "--validation_noise_draws"),
        (["--model_size", "huge"], "preset"),
    ],
)
def test_bad_classifier_arguments_are_refused_before_training(tmp_path, classifier_config, extra, message):
    out = tmp_path / "bad"
    with pytest.raises((ValueError, SystemExit), match=re.escape(message)):
        train_module.main(classifier_args(out, classifier_config, *extra))
    assert not out.exists() or not any(out.iterdir())


def test_a_classifier_needs_labels(tmp_path, classifier_config):
    with pytest.raises(SystemExit, match="--task classifier learns the classes of --label_column"):
        train_module.main(training_args(tmp_path / "bad", classifier_config, "--task", "classifier"))


def test_classifier_flags_are_refused_for_a_denoiser_and_unknown_config_keys_are_named(tmp_path, classifier_config):
    with pytest.raises(SystemExit, match="--validation_split applies to --task classifier"):
        train_module.main(training_args(tmp_path / "a", classifier_config, "--validation_split", "0.1"))
    unet_like = tmp_path / "unet.json"
    unet_like.write_text(json.dumps({**TINY_CLASSIFIER, "up_block_types": ["UpBlock2D", "UpBlock2D"]}))
    with pytest.raises(ValueError, match="up_block_types"):
        train_module.main(classifier_args(tmp_path / "b", unet_like))


def test_recipe_is_chosen_by_the_task(tmp_path):
    args = parse_args(["--output_dir", str(tmp_path / "a"), "--task", "classifier", "--label_column", "label"])
    assert train_module.select_recipe(args) is ClassifierRecipe
    assert args.loss_reduction == "mean" and args.validation_split == 0.1
    assert args.validation_sigma_edges == DEFAULT_EDGES and args.classifier_sigma_max == 80.0
    assert parse_args(["--output_dir", str(tmp_path / "b")]).task == "denoiser"


# ------------------------------------------------------------------------------------------------ two processes
def test_two_processes_sum_their_held_out_counts_to_the_single_process_accuracy(tmp_path, classifier_config):
    """Under a 2-process launch each process evaluates half of the held-out batches; the summed counts equal what one
    process computes for the same exported classifier (the noise draws do not depend on the number of processes)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    arguments = classifier_args(out, classifier_config, "--max_train_steps", "2", "--validation_noise_draws", "2")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(Path(__file__).with_name("multiprocess_training_script.py")), str(tmp_path / "ranks"), *arguments,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["num_processes"] == 2
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    report = json.loads((out / "accuracy.json").read_text())
    assert all(bucket["count"] == 2 * 90 for bucket in report["buckets"])

    trainer = make_trainer(tmp_path / "single", classifier_config, "--validation_noise_draws", "2")
    single = trainer.recipe.bucket_accuracy(NoiseConditionalClassifier.from_pretrained(out).eval())
    assert {key: value for key, value in report.items() if key != "step"} == single


def test_xs_preset_is_a_narrower_model_of_the_tiny_layout(tmp_path):
    """--model_size xs: the weak model of autoguidance or a cheap classifier (a quarter of tiny's channels)."""
    from diffusers_edm.training.model_presets import make_backbone, make_classifier

    assert parse_args(["--output_dir", str(tmp_path / "a"), "--model_size", "xs"]).model_size == "xs"
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    xs, tiny = make_backbone("unet", "xs", 16, 1, False, 10), make_backbone("unet", "tiny", 16, 1, False, 10)
    assert xs.config.down_block_types == tiny.config.down_block_types and count(xs) < count(tiny) / 3
    assert count(make_classifier("xs", 16, 1, 10)) < count(make_classifier("tiny", 16, 1, 10)) / 3
