"""Test-wide settings: no test may reach the Hugging Face Hub."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

# `benchmarks` is a folder of the repository, not part of the package: its harness (e.g. the host-sync counter) is
# imported by the tests too.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One intra-op thread: the tests' models are tiny, and two oneDNN threads on a busy 2-core machine stall
# (a tiny UNet forward went from 23 ms to 1.6 s); subprocess tests set OMP_NUM_THREADS=1 for the same reason.
import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402
from tiny_training import reset_accelerate_state, write_tiny_config  # noqa: E402


@pytest.fixture
def fresh_accelerate_state():
    """Each in-process training run starts from a fresh Accelerate singleton, as a new process would."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture
def tiny_config(tmp_path):
    """A ``--backbone_config`` file of a tiny UNet (see tests/tiny_training.py)."""
    return write_tiny_config(tmp_path)
