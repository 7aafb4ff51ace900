"""Evaluation with the training agent loop and tools: `visionr3 eval`, `visionr3 view`, the lmms-eval model."""
