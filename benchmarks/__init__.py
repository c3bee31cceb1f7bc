"""Benchmarks of ecdit: pytest-benchmark suites (`pytest benchmarks/`) and the report
(`python -m ecdit.benchmarks`, or `ecdit bench`), which writes docs/benchmarks.md and its plots.

`run_report(full=False, out_dir="docs", smoke=False)` is the entry point; see report.py for the
parts the report is built from.
"""

from .report import run_report  # noqa: F401  the entry point: ecdit.benchmarks.run_report
