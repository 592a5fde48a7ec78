"""The model card (README.md) of a trained pipeline: the pipeline's own card plus what the run adds.

There is one card path (:mod:`diffusers_edm.pipelines.model_card`): ``push_to_hub`` and training both render it, so
the usage example is generated from the saved model's config (labels within its classes, the run's guidance scale
and sample steps) and runs as written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pipelines import EDMPipeline, LearnedVariancePipeline
from ..pipelines.model_card import TrainingRecord

PIPELINE_CLASSES = {cls.__name__: cls for cls in (EDMPipeline, LearnedVariancePipeline)}
EMBEDDED_DATASET = "the embedded scikit-learn digits (8x8, upscaled)"


def write_model_card(args: argparse.Namespace, output_dir: Path, grid_path: Path | None, steps: int) -> Path:
    """Write ``output_dir/README.md`` for the pipeline already saved in ``output_dir`` after ``steps`` optimizer steps.

    The card is the pipeline's :meth:`model_card` (library diffusers, tags including ``diffusers-edm``, a usage example
    with the run's ``--guidance_scale`` and ``--sample_steps``) with the training record: data set, arguments (without
    the Hub token) and the sample grid.
    """
    output_dir = Path(output_dir)
    class_name = json.loads((output_dir / "model_index.json").read_text())["_class_name"]
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"{output_dir} holds a {class_name}; expected one of {sorted(PIPELINE_CLASSES)}.")
    pipeline = PIPELINE_CLASSES[class_name].from_pretrained(output_dir)
    arguments = {key: value for key, value in sorted(vars(args).items()) if key != "hub_token"}
    training = TrainingRecord(
        steps=steps,
        dataset=args.dataset_name or args.train_data_dir or EMBEDDED_DATASET,
        arguments=arguments,
        sample_grid=grid_path.name if grid_path is not None else None,
        datasets=[args.dataset_name] if args.dataset_name else None,
    )
    # A learned-variance model samples with its pipeline's default (100 respaced steps, at most T), as training does.
    sample_steps = None if isinstance(pipeline, LearnedVariancePipeline) else args.sample_steps
    card = pipeline.model_card(
        repo_id=args.hub_model_id or str(output_dir),
        num_inference_steps=sample_steps,
        guidance_scale=args.guidance_scale,
        training=training,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path
