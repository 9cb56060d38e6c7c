"""Experiments: what runs many models or many stages, above the studies. A profile names the models a figure
set compares (``profiles``); ``compare`` measures and evaluates them and pairs each trained model with its base;
a grid trains, measures and records its cells (``grid``); the GPU study runs the recipe on one GPU within a time
budget (``gpu``); ``sentence`` and ``early_exit`` look at a profile's pair through one sentence and through
cut-down models. ``throughput`` times one training step."""
