"""Training recipes, one per file: what is trained, its loss, its validation artefact and its export.

``select_recipe(args)`` is the one place that maps the command line to a recipe:

=======================================  ==================================  ===========================================
arguments                                recipe                              trains
=======================================  ==================================  ===========================================
``--task denoiser`` (default)            :class:`DenoisingRecipe`            EDM / VP / VE / iDDPM denoiser (``--precond``)
``--task denoiser --precond edm2``       :class:`EDM2Recipe`                 EDM denoiser, EDM2's learned-uncertainty loss
``--task denoiser --loss hybrid``        :class:`HybridRecipe`               learned-variance DDPM (hybrid loss)
``--task denoiser --caption_column C``   :class:`TextDenoisingRecipe`        text-to-image denoiser (``--precond``)
``--task classifier``                    :class:`ClassifierRecipe`           noise-conditional classifier
``--pretrained_model_name_or_path P``    :class:`FineTuneRecipe`             a pretrained SD / SDXL checkpoint (text)
=======================================  ==================================  ===========================================
"""

from __future__ import annotations

import argparse

from .base import Export, Recipe, RecipeData, reduce_loss
from .classifier import ClassifierRecipe
from .denoising import DenoisingRecipe
from .edm2 import EDM2Recipe
from .finetune import FineTuneRecipe
from .hybrid import HybridRecipe
from .text import TextDenoisingRecipe

RECIPES: tuple[type[Recipe], ...] = (
    DenoisingRecipe, EDM2Recipe, HybridRecipe, ClassifierRecipe, TextDenoisingRecipe, FineTuneRecipe,
)


def select_recipe(args: argparse.Namespace) -> type[Recipe]:
    """The recipe class of the parsed command line (see the module docstring)."""
    if args.task == "classifier":
        return ClassifierRecipe
    if args.loss == "hybrid":
        return HybridRecipe
    if getattr(args, "pretrained_model_name_or_path", None) is not None:
        return FineTuneRecipe
    if getattr(args, "caption_column", None) is not None:
        return TextDenoisingRecipe
    return EDM2Recipe if args.precond == "edm2" else DenoisingRecipe


def resolve_recipe_args(args: argparse.Namespace) -> type[Recipe]:
    """Select the recipe, refuse the other recipes' own arguments when given, and let it fill in its defaults."""
    recipe = select_recipe(args)
    P_mean, P_std = recipe.ln_sigma_distribution
    args.P_mean = P_mean if args.P_mean is None else args.P_mean
    args.P_std = P_std if args.P_std is None else args.P_std
    for other in RECIPES:
        for name in set(other.own_arguments) - set(recipe.own_arguments):
            if getattr(args, name, None) is not None:
                raise ValueError(f"--{name} applies to {other.selected_by} only; drop it.")
    recipe.resolve_args(args)
    return recipe


__all__ = [
    "ClassifierRecipe",
    "DenoisingRecipe",
    "EDM2Recipe",
    "Export",
    "FineTuneRecipe",
    "HybridRecipe",
    "Recipe",
    "RecipeData",
    "TextDenoisingRecipe",
    "reduce_loss",
    "resolve_recipe_args",
    "select_recipe",
]
