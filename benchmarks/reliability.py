"""Reliability counts for RESULTS.md (issue 8): runs the bad-input table, the untrusted-file,
interrupted-training and numerical-fault tests and records how many cases were tried and passed.

    python -m benchmarks.reliability [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

import pytest

from benchmarks.results import machine, write_section

HEADING = "Reliability"
FILES: tuple[str, ...] = ("tests/test_bad_input.py", "tests/test_untrusted.py", "tests/test_interrupt.py",
                          "tests/test_numerics.py")
# test function → what one of its cases checks (a row of the table)
GROUPS: dict[str, str] = {
    "test_cli_bad_input": "bad input, CLI: exit code 2, one stderr line, no traceback, no output or temp file",
    "test_cli_bad_input_in_a_fresh_process": "the same, as `python -m slimify` in a fresh process",
    "test_api_bad_input": "bad input, API: SlimifyError with a one-line message, no output or temp file",
    "test_api_refuses_and_never_runs_the_payload": "planted pickle payload / hostile .slim source, API: refused, "
                                                   "payload never ran",
    "test_cli_refuses_and_never_runs_the_payload": "planted pickle payload, CLI: exit 2, payload never ran",
    "test_a_fresh_process_that_could_import_the_payload_refuses_it": "payload importable in a fresh process: "
                                                                     "refused (control: unpickling runs it)",
    "test_no_module_unpickles_or_loads_torch_files_unsafely": "source scan: no torch.load without weights_only, "
                                                              "no pickle loads",
    "test_the_payload_is_live": "control: the planted payload runs when unpickled",
    "test_sigkill_mid_epoch_and_mid_write_then_resume_equals_an_uninterrupted_run": "SIGKILL mid-epoch and "
        "mid-checkpoint-write, resume twice: final weights equal an uninterrupted run",
    "test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint": "NaN loss at a chosen switch and step: "
        "one line naming both, weights untouched, last checkpoint kept",
    "test_the_kept_checkpoint_resumes_to_the_end": "the kept checkpoint resumes to the end",
    "test_inf_loss_without_any_checkpoint": "infinite loss before any checkpoint: one line, nothing written",
    "test_a_diverged_model_never_replaces_a_good_checkpoint": "non-finite weights are never checkpointed",
    "test_huge_learning_rate_on_the_command_line": "lr 1e30 on the CLI: exit 2, one line, finite checkpoint kept",
    "test_the_table_is_large_and_ids_are_unique": "the tables hold >= 60 cases with unique ids",
    "test_api_ids_are_unique": "API case ids are unique",
    "test_force_replaces_what_the_refusals_protect": "with --force, eval --json and calibrate replace their output",
}


class Tally:
    """A pytest plugin counting outcomes per test function."""

    def __init__(self) -> None:
        self.tried: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        func = report.nodeid.split("::")[-1].split("[")[0]
        if report.skipped and report.when in ("setup", "call"):
            self.skipped[func] += 1
        elif report.when == "call" or (report.failed and report.when == "setup"):
            self.tried[func] += 1
            self.passed[func] += int(report.passed)
            if report.failed:
                self.failed.append(report.nodeid)


def body(tally: Tally, seconds: float) -> str:
    rows = ["| what each case checks | cases tried | passed | skipped |", "|---|---|---|---|"]
    other = [f for f in tally.tried if f not in GROUPS]
    for func in [*GROUPS, *other]:
        if tally.tried[func] or tally.skipped[func]:
            label = GROUPS.get(func, f"`{func}`")
            rows.append(f"| {label} | {tally.tried[func]} | {tally.passed[func]} | {tally.skipped[func]} |")
    bad_input = sum(tally.tried[f] for f in ("test_cli_bad_input", "test_api_bad_input"))
    bad_passed = sum(tally.passed[f] for f in ("test_cli_bad_input", "test_api_bad_input"))
    total, passed = sum(tally.tried.values()), sum(tally.passed.values())
    lines = ["Command: `python -m benchmarks.reliability`  ", f"Machine: {machine()}; {seconds:.0f} s in all.", "",
             f"Bad-input table: **{bad_passed} of {bad_input}** cases passed (CLI and API); all reliability "
             f"tests: **{passed} of {total}** passed.", "", *rows]
    if tally.failed:
        lines += ["", "Failed: " + ", ".join(f"`{n}`" for n in tally.failed)]
    lines += ["", "Cases skipped here need a machine without CUDA or a directory this user cannot write to. "
              "See docs/reliability.md for what each guarantee means and how it is enforced."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="Print the section instead of writing RESULTS.md.")
    args = parser.parse_args()
    tally = Tally()
    start = time.perf_counter()
    code = pytest.main([*FILES, "-q", "-p", "no:cacheprovider"], plugins=[tally])
    section = body(tally, time.perf_counter() - start)
    print(section)
    if not args.no_write:
        write_section(HEADING, section)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
