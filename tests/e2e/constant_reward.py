"""The DAPO-bound run's reward (tests/e2e/test_filter_groups.py), loaded by verl's reward workers from this path: the
same score for every response, so every group has zero variance and ``algorithm.filter_groups`` drops all of them."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return 0.5
