"""Pipelines: one class per file, and their one model-card path (:mod:`.model_card`).

diffusers 0.42 resolves a saved pipeline's ``_class_name`` in the ``diffusers`` namespace only, so importing this
package adds its pipeline classes there, where diffusers has no class of that name:
``DiffusionPipeline.from_pretrained(dir)`` then loads them once ``diffusers_edm`` is imported.
"""

import diffusers

from .pipeline_edm import EDMPipeline
from .pipeline_learned_variance import LearnedVariancePipeline

__all__ = ["EDMPipeline", "LearnedVariancePipeline"]

for _pipeline in (EDMPipeline, LearnedVariancePipeline):
    if not hasattr(diffusers, _pipeline.__name__):
        setattr(diffusers, _pipeline.__name__, _pipeline)
