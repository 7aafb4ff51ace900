"""Rows that cannot train, through verl's real trainer (the ``bad_data`` run of tests/e2e/conftest.py, its parquet
from :func:`tests.e2e.conftest.bad_rows`), with ``data.skip_bad_rows=true``.

The build (``VisionRLDataset``) leaves out the bomb-sized image and the row without a ground truth. The truncated PNG
passes the build, which reads only headers; the trainer decodes each prompt's images before rollout
(``VisionR3SyncTrainer._fetch_one_gen_batch``), where verl would otherwise crash the step serialising the batch, and
skips it for the next prompt. All three are counted (log lines, ``visionr3/data/skipped_rows``) and step 1 trains on
good rows only. Without the setting each stops the run naming file, row and field (tests/data/test_dataset.py)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bad_data(e2e_runs):
    run = e2e_runs["bad_data"]
    run.check()
    log = run.log.read_text(errors="replace")
    (step,) = [json.loads(line)["data"] for line in (run.directory / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    dumped = [json.loads(line) for line in (run.directory / "rollouts" / "1.jsonl").read_text().splitlines()]
    return run, log, step, dumped


def test_the_build_skips_and_counts_the_rows_that_cannot_train(bad_data):
    run, log, _, _ = bad_data
    rows = run.directory / "rows.parquet"
    assert f"visionr3: skipped 2 bad row(s) of 6 (data.skip_bad_rows=true): {rows} row 2: field 'images[0]'" in log
    assert f"{rows} row 3: field 'reward_model.ground_truth': ValueError: missing" in log


def test_an_image_that_does_not_decode_is_skipped_before_rollout(bad_data):
    run, log, step, dumped = bad_data
    rows = run.directory / "rows.parquet"
    assert (f"visionr3: skipped {rows} row 0: field 'images[0]': OSError: image file is truncated "
            "(its header is readable: it passed the build)") in log
    assert step["visionr3/data/skipped_rows"] == 3
    assert "actor/pg_loss" in step
    assert len(dumped) == 4 and {row["row_index"] for row in dumped} == {1, 4}
