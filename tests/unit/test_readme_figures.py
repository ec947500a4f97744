"""The README's measured figures are exactly what the committed result files say (issue 7: every figure in the
README comes from a JSON result in the repo). Regenerate with ``python -m benchmarks.make_report``."""

from __future__ import annotations

import re

from benchmarks import make_report


def test_the_readme_table_is_the_one_the_result_files_give() -> None:
    text = make_report.README.read_text()
    found = re.search(re.escape(make_report.BEGIN) + r"\n(.*?)\n" + re.escape(make_report.END), text, re.DOTALL)
    assert found, "README.md lost its measured-figures markers"
    expected = "\n".join(["", *make_report.table(make_report.load()), ""])
    assert found.group(1) == expected, (
        "README figures differ from benchmarks/results: run python -m benchmarks.make_report"
    )


def test_a_missing_result_says_not_measured_instead_of_keeping_a_figure() -> None:
    rows = make_report.table({})
    assert len(rows) == 2 + len(make_report.ROWS)
    assert all("not measured" in row for row in rows[2:])
