"""Training: ``main.py`` (``visionr3 train``: a recipe or config through verl's ``main_ppo``), ``trainer.py`` (the
``visionr3_sync`` trainer mode: verl's trainer plus visionr3's metrics, shaping and rollout-dump columns) and
``sft.py`` (``visionr3 sft``: the cold start on verl's SFT trainer)."""
