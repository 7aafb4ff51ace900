"""The CPU demo and its offline task: ``run.py`` (``visionr3 demo``: tiny model → synthetic data → warm-up → verl's
GRPO trainer → merge), ``synthetic.py`` (the "colour of the small square" task: images, rows, parquet) and
``warmup.py`` (the supervised cold start, one demonstration format per recipe). The tests and the e2e runs use the same
task and warm-ups."""
