"""The Qwen3-VL step's reward (tests/e2e/test_qwen3_vl.py), loaded by verl's reward workers from this path: a number
in [0, 1) taken from the CRC-32 of the response text. The step runs the untrained tiny model, whose answers a real
reward would score 0 across the board — zero advantages, a zero gradient, an update that moves nothing but weight
decay. Two different sampled responses get different rewards, so every group has variance and the policy gradient
flows through Qwen3-VL's forward and backward."""

import zlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return (zlib.crc32((solution_str or "").encode()) % 1000) / 1000
