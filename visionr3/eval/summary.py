"""The summary of an evaluation: accuracy per benchmark and category, from the records alone (pure functions).

Arithmetic, stated once so numbers are comparable across runs and with papers:

* **accuracy** of a group = the mean over its questions of the question's mean correctness over its k samples
  (Avg@k; with k = 1 it is plain accuracy). Each question weighs the same whatever k is.
* **std_k** = the standard deviation, over the k sample passes, of the group's accuracy in that pass (0 for k = 1):
  how much of a difference between two runs is sampling noise.
* **pass@k** (k > 1) = the share of questions with at least one correct sample.
* **tool_rate** = the share of samples with at least one tool call; **valid_tool_rate** = the share of calls that
  returned an image; **turns** = mean assistant turns per sample.
* **pairs** (MMVP, when records carry ``extra.pair_id``) = the share of question pairs with both questions right in
  a pass, averaged over passes — MMVP's own metric.
* A sample whose evaluation failed (``error``) counts as wrong and is counted in ``errors``.
* The ``overall`` row of a benchmark averages its questions (micro); the ``ALL`` row averages the benchmarks'
  accuracies (macro), so a large benchmark does not drown a small one.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from visionr3.eval.records import SampleRecord


@dataclass(frozen=True)
class SummaryRow:
    benchmark: str
    category: str  # "overall" for the benchmark as a whole; "" never appears
    questions: int
    samples: int  # records (questions x k)
    accuracy: float
    std_k: float
    pass_at_k: float | None
    tool_rate: float
    valid_tool_rate: float | None
    turns: float
    errors: int
    pairs: float | None = None


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def summarize_group(benchmark: str, category: str, records: Sequence[SampleRecord]) -> SummaryRow:
    """One row from the records of one group (any k; questions keyed by ``(benchmark, sample_id)``)."""
    by_question: dict[tuple[str, str], list[SampleRecord]] = defaultdict(list)
    by_pass: dict[int, list[SampleRecord]] = defaultdict(list)
    for r in records:
        by_question[(r.benchmark, r.sample_id)].append(r)
        by_pass[r.sample].append(r)
    k = max((len(v) for v in by_question.values()), default=1)
    accuracy = _mean([_mean([float(r.correct and not r.error) for r in rs]) for rs in by_question.values()])
    pass_accuracy = [_mean([float(r.correct and not r.error) for r in rs]) for rs in by_pass.values()]
    std_k = statistics.pstdev(pass_accuracy) if len(pass_accuracy) > 1 else 0.0
    pass_at_k = _mean([float(any(r.correct and not r.error for r in rs)) for rs in by_question.values()]) if k > 1 else None
    calls = [c for r in records for c in r.tool_calls]
    pairs = _pair_accuracy(records)
    return SummaryRow(
        benchmark=benchmark,
        category=category,
        questions=len(by_question),
        samples=len(records),
        accuracy=accuracy,
        std_k=std_k,
        pass_at_k=pass_at_k,
        tool_rate=_mean([float(bool(r.tool_calls)) for r in records]),
        valid_tool_rate=_mean([float(c.valid) for c in calls]) if calls else None,
        turns=_mean([float(r.num_turns) for r in records]),
        errors=sum(1 for r in records if r.error),
        pairs=pairs,
    )


def _pair_accuracy(records: Sequence[SampleRecord]) -> float | None:
    pairs: dict[tuple[int, object], list[SampleRecord]] = defaultdict(list)
    for r in records:
        if "pair_id" in (r.extra or {}):
            pairs[(r.sample, r.extra["pair_id"])].append(r)
    complete = [rs for rs in pairs.values() if len(rs) == 2]
    if not complete:
        return None
    return _mean([float(all(r.correct and not r.error for r in rs)) for rs in complete])


def summarize(records: Iterable[SampleRecord]) -> list[SummaryRow]:
    """Rows per (benchmark, category), then the benchmark's ``overall``, benchmarks in name order, and a final
    ``ALL`` row (macro average over benchmarks) when there is more than one benchmark."""
    by_benchmark: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in records:
        by_benchmark[r.benchmark].append(r)
    rows: list[SummaryRow] = []
    overall: list[SummaryRow] = []
    for benchmark in sorted(by_benchmark):
        group = by_benchmark[benchmark]
        categories: dict[str, list[SampleRecord]] = defaultdict(list)
        for r in group:
            if r.category:
                categories[r.category].append(r)
        if len(categories) > 1 or (categories and sum(map(len, categories.values())) < len(group)):
            rows += [summarize_group(benchmark, c, categories[c]) for c in sorted(categories)]
        row = summarize_group(benchmark, "overall", group)
        rows.append(row)
        overall.append(row)
    if len(overall) > 1:
        rows.append(
            SummaryRow(
                benchmark="ALL",
                category="macro",
                questions=sum(r.questions for r in overall),
                samples=sum(r.samples for r in overall),
                accuracy=_mean([r.accuracy for r in overall]),
                std_k=_mean([r.std_k for r in overall]),
                pass_at_k=_mean([r.pass_at_k for r in overall]) if all(r.pass_at_k is not None for r in overall) else None,
                tool_rate=_mean([r.tool_rate for r in overall]),
                valid_tool_rate=None,
                turns=_mean([r.turns for r in overall]),
                errors=sum(r.errors for r in overall),
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_table(rows: Sequence[SummaryRow]) -> str:
    """A Markdown table (readable in a terminal, pastable into a paper's notes)."""
    header = ["benchmark", "category", "questions", "samples", "acc %", "std_k", "pass@k %", "pairs %", "tool %", "valid tool %", "turns", "errors"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [
            r.benchmark, r.category, str(r.questions), str(r.samples), _pct(r.accuracy), f"{100 * r.std_k:.1f}",
            _pct(r.pass_at_k), _pct(r.pairs), _pct(r.tool_rate), _pct(r.valid_tool_rate), f"{r.turns:.2f}", str(r.errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(records: Sequence[SampleRecord], out: str | Path, protocol: dict) -> tuple[Path, Path]:
    """``<out>.summary.json`` (rows + protocol) and ``<out>.summary.md`` (protocol + table) next to the results."""
    out = Path(out)
    rows = summarize(records)
    json_path, md_path = out.with_name(out.stem + ".summary.json"), out.with_name(out.stem + ".summary.md")
    json_path.write_text(json.dumps({"protocol": protocol, "rows": [asdict(r) for r in rows]}, indent=2) + "\n", encoding="utf-8")
    knobs = "\n".join(f"- {k}: {v}" for k, v in protocol.items())
    md_path.write_text(f"# {out.name}\n\nProtocol:\n{knobs}\n\n{render_table(rows)}\n", encoding="utf-8")
    return json_path, md_path


__all__ = ["SummaryRow", "render_table", "summarize", "summarize_group", "write_summary"]
