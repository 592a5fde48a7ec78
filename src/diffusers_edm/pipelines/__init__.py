"""Pipelines: one class per file, and their one model-card path (:mod:`.model_card`).

diffusers 0.42 resolves a saved pipeline's ``_class_name`` in the ``diffusers`` namespace only, so importing this
package adds its pipeline classes there, where diffusers has no class of that name:
``DiffusionPipeline.from_pretrained(dir)`` then loads them once ``diffusers_edm`` is imported.
"""

import diffusers

from .pipeline_edm import EDMPipeline
from .pipeline_edm_text_to_image import EDMTextToImagePipeline
from .pipeline_learned_variance import LearnedVariancePipeline, LearnedVarianceTextToImagePipeline
from .prompt_encoding import EMPTY_PROMPT_CONVENTIONS, PromptEmbeddings, PromptEncoder

__all__ = [
    "EDMPipeline",
    "EDMTextToImagePipeline",
    "EMPTY_PROMPT_CONVENTIONS",
    "LearnedVariancePipeline",
    "LearnedVarianceTextToImagePipeline",
    "PromptEmbeddings",
    "PromptEncoder",
]

for _pipeline in (EDMPipeline, EDMTextToImagePipeline, LearnedVariancePipeline, LearnedVarianceTextToImagePipeline):
    if not hasattr(diffusers, _pipeline.__name__):
        setattr(diffusers, _pipeline.__name__, _pipeline)
