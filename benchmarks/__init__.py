"""Benchmarks of ecdit: pytest-benchmark suites (`pytest benchmarks/`) and the report
(`python -m ecdit.benchmarks`, or `ecdit bench`), which writes docs/benchmarks.md and its plots.

`run_report(full=False, out_dir="docs", smoke=False)` is the entry point; see report.py for the
parts the report is built from.
"""


def run_report(full: bool = False, out_dir="docs", smoke: bool = False, **kwargs):
    """Run the benchmark sweep and write <out_dir>/benchmarks.md and <out_dir>/benchmarks/*.png;
    returns the path of the markdown file. See ecdit.benchmarks.report.run_report."""
    from .report import run_report as _run
    return _run(full=full, out_dir=out_dir, smoke=smoke, **kwargs)
