"""visionr3's paper recipes: one folder per paper with a README, ``config.yaml`` (the GPU recipe, deltas on
``visionr3_base``), ``cpu.yaml`` (the same recipe at CPU scale on the tiny model) and ``run.sh``.

The folder lives at the top of the repository, where users read and edit it, and ships inside the wheel as
``visionr3.recipes`` (pyproject.toml), so ``visionr3 train --recipe NAME`` finds it on any install, including a Ray
job's working directory and the docker image. The code that lists and finds recipes is :mod:`visionr3.config`.
"""
