"""Rollout backends visionr3 adds to verl: the engines verl's agent loop generates with (and that serve a local
judge or an evaluation).

- :mod:`visionr3.rollout.hf` — the HF-transformers backend, ``rollout.name=hf``: runs wherever transformers runs,
  CPUs included, where none of verl's own engines (vLLM, SGLang, TensorRT-LLM) does.
"""
