"""Benchmarks of diffusers-edm against diffusers' own schedulers, measured side by side in one run.

Each script (``python -m benchmarks.<name> --help``) prints a table, writes a PNG plot and a JSON/Markdown
record under ``benchmarks/results/``; ``--quick`` runs in seconds and is what ``tests/test_benchmarks_quick.py``
and ``tests/test_benchmarks_training_quick.py`` exercise. Shared pieces live in modules named for what they hold:

- :mod:`benchmarks.gaussian_mixture`: the analytic data set with an exact denoiser ``D(x; sigma)``;
- :mod:`benchmarks.probability_flow_reference`: the float64 reference solution of the probability-flow ODE;
- :mod:`benchmarks.distribution_distances`: distances between a sample set and the mixture;
- :mod:`benchmarks.scheduler_adapters`: how each scheduler is configured and driven by an exact model;
- :mod:`benchmarks.digits_split`: the held-out split of the embedded digits used by the quality benchmark;
- :mod:`benchmarks.digit_classifier`: the small CNN whose features score sample quality;
- :mod:`benchmarks.reporting`: tables, JSON records and plots.
"""
