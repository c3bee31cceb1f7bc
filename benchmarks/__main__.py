"""`python -m ecdit.benchmarks [--full | --smoke] [--out-dir DIR] [--json PATH]`: run the benchmark
sweep and write DIR/benchmarks.md (default docs/) with its plots in DIR/benchmarks/."""
import argparse
import sys

from .report import report_from_json, run_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ecdit.benchmarks", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="every size of the issue (takes longer)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the code path only")
    p.add_argument("--out-dir", default="docs", help="where benchmarks.md and benchmarks/*.png go (default docs)")
    p.add_argument("--json", default=None, help="also write every raw sample to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="redraw the report of an earlier --json dump instead of measuring")
    a = p.parse_args(argv)
    if a.from_json:
        print(report_from_json(a.from_json, a.out_dir))
        return 0
    path = run_report(full=a.full, out_dir=a.out_dir, smoke=a.smoke, progress=not a.quiet, json_path=a.json,
                      command="python -m ecdit.benchmarks" + (" --full" if a.full else "") + (" --smoke" if a.smoke else ""))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
