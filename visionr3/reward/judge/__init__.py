"""LLM-as-a-judge over any OpenAI-compatible endpoint: exact prompt presets, strict verdict parsing, bounded retries.

What it must get right is, each time, a bug in the papers' code (papers.md §1.5, §1.7, §2.5, §3.4, §4.5); each
module's docstring says which part it holds:

- :mod:`~visionr3.reward.judge.prompts` — pure: the papers' prompt presets (:data:`PROMPTS`, :class:`JudgePrompt`) and
  the verdict parsers that read only the judge's final verdict.
- :mod:`~visionr3.reward.judge.config` — :class:`JudgeConfig` (the client keys of ``visionr3.reward.judge``), its
  errors (:class:`JudgeConfigError`), :func:`resolve_http` and reading the API key from the environment.
- :mod:`~visionr3.reward.judge.client` — :class:`JudgeClient` and :func:`judge_client`: the two HTTP paths, retries
  and ``Retry-After``, request slots, the verdict cache, :class:`Verdict` and :class:`JudgeStats`.
"""
