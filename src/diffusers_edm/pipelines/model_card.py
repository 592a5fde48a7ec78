"""The one model-card path of the package's pipelines: ``push_to_hub`` and the training script both write it.

A card is a huggingface_hub ``ModelCard`` rendered from :data:`CARD_TEMPLATE`. Each pipeline describes itself
(``model_card(...)``: a summary, tags and the arguments of a pipeline call that is valid for its model); training adds
a :class:`TrainingRecord`. The usage example is generated from the pipeline's own config, so it runs as written.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, ModelCardData, create_repo

#: The part of every card (pipelines, classifiers) that states how a trained model was trained.
TRAINING_SECTION = """{% if training %}
## Training

{{ training.steps }} optimizer steps on {{ training.dataset }}, with these arguments:

```json
{{ training_arguments }}
```
{% endif %}"""

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}
{% if sample_grid %}
![samples]({{ sample_grid }})
{% endif %}
## Usage

```python
import torch
from diffusers_edm import {{ pipeline_class }}  # pip install diffusers-edm

pipe = {{ pipeline_class }}.from_pretrained({{ repo_literal }})
images = pipe({{ call_arguments }}).images
```

`DiffusionPipeline.from_pretrained({{ repo_literal }})` loads the same pipeline once `diffusers_edm` is imported.

## Sampler

`{{ scheduler_class }}` with

{{ scheduler_settings }}
""" + TRAINING_SECTION

PLACEHOLDER_REPO_ID = "path/to/this/repo"


@dataclass
class TrainingRecord:
    """What a training run adds to a card: its length, data and arguments, and the sample grid next to the card."""

    steps: int
    dataset: str
    arguments: dict[str, Any] = field(default_factory=dict)
    sample_grid: str | None = None
    datasets: list[str] | None = None


def python_call_arguments(arguments: dict[str, Any]) -> str:
    """``key=value, ...`` with each value as a Python literal (and a seeded generator, so the example reproduces)."""
    rendered = [f"{key}={value!r}" for key, value in arguments.items()]
    rendered.append("generator=torch.Generator().manual_seed(0)")
    return ", ".join(rendered)


def build_model_card(
    pipeline: DiffusionPipeline,
    *,
    repo_id: str | None,
    summary: str,
    tags: list[str],
    call_arguments: dict[str, Any],
    training: TrainingRecord | None = None,
) -> ModelCard:
    """The card of ``pipeline``: metadata (library diffusers, tags), summary, a runnable usage example, the
    scheduler's settings and, for a trained model, the training record."""
    scheduler = pipeline.scheduler
    settings = {key: value for key, value in scheduler.config.items() if not key.startswith("_")}
    repo = repo_id or PLACEHOLDER_REPO_ID
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=["diffusers", "diffusers-edm", *tags],
        datasets=training.datasets if training is not None else None,
    )
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        title=repo.rstrip("/").split("/")[-1],
        summary=summary,
        sample_grid=training.sample_grid if training is not None else None,
        pipeline_class=type(pipeline).__name__,
        repo_literal=json.dumps(repo),
        call_arguments=python_call_arguments(call_arguments),
        scheduler_class=type(scheduler).__name__,
        scheduler_settings="\n".join(f"- `{key}`: `{value}`" for key, value in sorted(settings.items())),
        training=training,
        training_arguments=json.dumps(training.arguments, indent=2, default=str) if training is not None else "",
    )


class ModelCardHubMixin:
    """``save_pretrained(..., push_to_hub=True)`` and ``push_to_hub`` upload the pipeline's own ``model_card``
    as README.md (diffusers' default card is a generic template with no usage example)."""

    def model_card(self, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
        raise NotImplementedError(f"{type(self).__name__} must define model_card().")

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """``DiffusionPipeline.save_pretrained``; with ``push_to_hub=True`` the upload carries :meth:`model_card`."""
        hub_keys = ("repo_id", "private", "token", "commit_message", "create_pr")
        hub = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
        super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        if not push_to_hub:
            return None
        repo_id = hub.get("repo_id") or os.path.basename(os.path.normpath(save_directory))
        repo_id = create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=hub.get("token")).repo_id
        self.model_card(repo_id).save(os.path.join(save_directory, "README.md"))
        return self._upload_folder(
            save_directory,
            repo_id,
            token=hub.get("token"),
            commit_message=hub.get("commit_message"),
            create_pr=hub.get("create_pr", False),
        )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> str:
        """Upload the pipeline and its :meth:`model_card` to the Hub repository ``repo_id``."""
        with tempfile.TemporaryDirectory() as working_dir:
            return self.save_pretrained(
                working_dir,
                push_to_hub=True,
                repo_id=repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                create_pr=create_pr,
                safe_serialization=safe_serialization,
                variant=variant,
            )
