"""`python -m bench [--quick] [SCENARIO...]`: run benchmarks, write bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
import warnings
from pathlib import Path

from bench import scenarios
from bench.harness import RESULTS_DIR, SCENARIOS, Bench, Report, Scenario
from bench.report import echo, write_json, write_markdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer calls and repeats)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where to write results")
    return parser.parse_args(argv)


def run_one(bench: Bench, chosen: Scenario) -> Report:
    report = Report(chosen.name, chosen.title, bench.quick)
    limit = chosen.quick_limit if bench.quick else chosen.full_limit
    started = time.monotonic()
    echo(f"== {chosen.name}: {chosen.title} (limit {limit:.0f} s)")
    try:
        asyncio.run(asyncio.wait_for(chosen.run(bench, report), limit))
    except Exception as exc:  # a failed scenario still reports what it measured
        report.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=bench.log)
        echo(f"   failed: {report.error} (traceback in the log)")
    finally:
        report.problems += bench.stop_all() + bench.problems
        bench.problems = []
        report.seconds = time.monotonic() - started
    for problem in report.problems:
        echo(f"   problem: {problem}")
    echo(f"   done in {report.seconds:.0f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="mcp")
    args = parse_args(argv)
    scenarios.load()
    if args.list:
        for chosen in SCENARIOS.values():
            print(f"{chosen.name:12} {chosen.title}")
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        echo(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    selected = [SCENARIOS[name] for name in args.scenarios or SCENARIOS]
    bench = Bench(quick=args.quick, results_dir=args.results)
    failed = False
    started = time.monotonic()
    try:
        for chosen in selected:
            report = run_one(bench, chosen)
            write_json(report, args.results)
            failed |= bool(report.error or report.problems)
    finally:
        bench.close()
    markdown = write_markdown(args.results, SCENARIOS)
    echo(f"all done in {time.monotonic() - started:.0f} s; see {markdown}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
