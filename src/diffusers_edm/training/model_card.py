"""The model card (README.md) of a trained pipeline, made with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A {{ kind }} trained with [diffusers-edm](https://pypi.org/project/diffusers-edm/) for {{ steps }} optimizer steps
on {{ dataset }}.

![samples](samples.png)

## Use

```python
import diffusers_edm  # registers the package's classes with diffusers
from {{ module }} import {{ pipeline_class }}

pipe = {{ pipeline_class }}.from_pretrained("{{ repo }}")
images = pipe(batch_size=16{{ call_extra }}).images
```

## Training arguments

```json
{{ arguments }}
```
"""


def write_model_card(args: argparse.Namespace, output_dir: Path, grid_path: Path | None, steps: int) -> Path:
    """Write ``output_dir/README.md``: library diffusers, tags including ``diffusers-edm``, arguments, sample grid."""
    hybrid = args.loss == "hybrid"
    dataset = args.dataset_name or args.train_data_dir or "the embedded scikit-learn digits (8x8, upscaled)"
    tags = ["diffusers", "diffusers-edm", "unconditional-image-generation" if args.label_column is None else "class-conditional"]
    tags.append("learned-variance-ddpm" if hybrid else f"{args.precond}-preconditioning")
    card_data = ModelCardData(library_name="diffusers", tags=tags, datasets=[args.dataset_name] if args.dataset_name else None)
    arguments = {k: v for k, v in sorted(vars(args).items()) if k != "hub_token"}
    card = ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        title=args.hub_model_id or output_dir.name,
        kind="learned-variance DDPM (hybrid loss)" if hybrid else f"{args.precond.upper()}-preconditioned denoiser",
        steps=steps,
        dataset=dataset,
        module="diffusers_edm",
        pipeline_class="LearnedVariancePipeline" if hybrid else "EDMPipeline",
        repo=args.hub_model_id or str(output_dir),
        call_extra=", class_labels=list(range(16))" if args.label_column else "",
        arguments=json.dumps(arguments, indent=2, default=str),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path
