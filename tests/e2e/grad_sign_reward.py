"""The gradient-sign check's reward (tests/e2e/test_gradient_sign.py), loaded by verl's reward workers from this path:
+1 for the row's ``prefer`` colour, -1 for its ``avoid`` colour (each row names one of the two), 0 for anything else
(another colour, no answer). The colour is the word right after the last ``<answer>``, closed or not: the tiny policy
often stops before ``</answer>``, and what the check needs is the answer it chose."""

import re

ANSWER = re.compile(r"<answer>\s*([a-z]+)")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    answers = ANSWER.findall(solution_str or "")
    answer = answers[-1] if answers else None
    if answer is not None and answer == extra_info.get("prefer"):
        return 1.0
    if answer is not None and answer == extra_info.get("avoid"):
        return -1.0
    return 0.0
