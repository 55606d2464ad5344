"""Run the MCP conformance suite (`conformance server`, @modelcontextprotocol/conformance) and read its checks.

Two releases are installed side by side (scripts/install-test-deps.sh): the pinned 0.1.16 as
`conformance`, and 0.2.0-alpha.12 as `conformance-next` (NEXT_TOOL), which knows the 2026-07-28
scenarios and the frozen requirement sets (`--requirements 2025-11-25|2026-07-28`, see
load_requirements).

The suite writes one `server-<scenario>-<timestamp>/checks.json` per scenario into the output folder.
The verdict per scenario comes from those checks, not from the exit code or the printed totals:

- "pass":    every check is SUCCESS or INFO
- "warn":    no FAILURE but at least one WARNING (the suite's own baseline logic counts this as failing)
- "fail":    at least one FAILURE, or the scenario wrote no checks at all
- "suspect": the checks pass but a tool result they carry has `isError: true` (a scenario such as
             tools-call-sampling passes on any non-empty content, including an error text)
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import NPM_MODULES, ROOT, missing, node22, node22_env, npm_tool

NEXT_TOOL = "conformance-next"
"""The executable of @modelcontextprotocol/conformance 0.2.0-alpha.12 (installed under an npm alias)."""
NEXT_PACKAGE = NPM_MODULES / "conformance-next"
EXPECTED_FAILURES_FILE = ROOT / "tests" / "conformance-expected-failures.yml"
# why: these scenarios are about an error result, so an isError inside their checks is the point
ERROR_IS_EXPECTED = {"tools-call-error"}
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_SUMMARY_LINE = re.compile(r"^[✓✗] (?P<scenario>[\w./-]+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")


@dataclass
class ConformanceResult:
    """Per-scenario verdicts of one `conformance server` run."""

    passed: int
    """Scenarios whose verdict is "pass"."""
    failed: int
    """Scenarios with any other verdict."""
    scenarios: dict[str, str]
    """Scenario name -> "pass" | "warn" | "fail" | "suspect"."""
    raw: dict[str, list[dict[str, Any]]]
    """Scenario name -> the checks the suite wrote for it."""
    checks_passed: int = 0
    checks_failed: int = 0
    expected_failures: set[str] = field(default_factory=set)
    returncode: int = 0
    output: str = ""

    @property
    def passing(self) -> set[str]:
        """The scenarios whose verdict is "pass" (a "suspect" pass on an isError result is not one)."""
        return {name for name, verdict in self.scenarios.items() if verdict == "pass"}

    @property
    def unexpected_failures(self) -> list[str]:
        return sorted(n for n, s in self.scenarios.items() if s != "pass" and n not in self.expected_failures)

    @property
    def stale_expected_failures(self) -> list[str]:
        """Expected failures that now pass (or did not run): the baseline should drop them."""
        return sorted(n for n in self.expected_failures if self.scenarios.get(n) == "pass")

    @property
    def ok(self) -> bool:
        return bool(self.scenarios) and not self.unexpected_failures and not self.stale_expected_failures

    def failure_report(self, names: Iterable[str] | None = None) -> str:
        """The failing checks of `names` (by default the unexpected failures), for an assertion message.

        A scenario that wrote no checks says so; a "suspect" one shows the isError text it passed on.
        """
        lines = []
        for name in self.unexpected_failures if names is None else sorted(names):
            checks = self.raw.get(name)
            lines.append(f"{name}: {self.scenarios.get(name, 'not run')}")
            if not checks:
                lines.append("  (no checks written: the scenario crashed, timed out or did not run)")
            for check in checks or []:
                if check.get("status") in ("FAILURE", "WARNING"):
                    lines.append(f"  {check.get('id')}: {check.get('status')} {check.get('errorMessage') or ''}")
                elif _carries_error_result(check):
                    lines.append(f"  {check.get('id')}: isError result {_error_text(check)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RequirementSet:
    """The server scenarios a spec revision requires, as the suite's requirements/<revision>.yaml lists them."""

    revision: str
    scored: frozenset[str]
    """Scenarios that count toward conformance to the revision."""
    not_scored: dict[str, str]
    """Scenarios run but not counted (extension, pending, added-after-release) -> the reason."""


def load_requirements(revision: str, package: Path = NEXT_PACKAGE) -> RequirementSet:
    """The server leg of `requirements/<revision>.yaml` in the installed suite (fails under CI if it is missing)."""
    path = package / "requirements" / f"{revision}.yaml"
    if not path.exists():
        missing(f"the conformance requirement set {revision} ({path})")
    data = yaml.safe_load(path.read_text()) or {}
    not_scored = {
        str(entry["scenario"]): str(entry.get("reason", ""))
        for entry in data.get("not_scored") or []
        if entry.get("leg") == "server"
    }
    return RequirementSet(revision, frozenset(str(s) for s in data.get("server") or []), not_scored)


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> set[str]:
    """Scenario names from a baseline file in the suite's own format (`server: [name, ...]`)."""
    if not path.exists():
        return set()
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("server") or []
    return {str(e["scenario"] if isinstance(e, dict) else e) for e in entries}


def _carries_error_result(check: dict[str, Any]) -> bool:
    details = check.get("details")
    if not isinstance(details, dict):
        return False
    result = details.get("result")
    return isinstance(result, dict) and result.get("isError") is True


def _error_text(check: dict[str, Any]) -> str:
    content = check["details"]["result"].get("content") or []
    texts = [str(c.get("text", "")) for c in content if isinstance(c, dict)]
    return repr(" ".join(texts)[:300])


def scenario_verdict(name: str, checks: list[dict[str, Any]]) -> str:
    statuses = {check.get("status") for check in checks}
    if not checks or "FAILURE" in statuses:
        return "fail"
    if "WARNING" in statuses:
        return "warn"
    if name not in ERROR_IS_EXPECTED and any(_carries_error_result(c) for c in checks):
        return "suspect"
    return "pass"


def parse_results(out_dir: Path, output: str = "", ignore: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Checks per scenario from the result folders in `out_dir` (skipping the folder names in `ignore`)."""
    skipped = set(ignore)
    raw: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(folder.name)
        if folder.name in skipped or not match or not (folder / "checks.json").exists():
            continue
        raw[match["scenario"]] = json.loads((folder / "checks.json").read_text())
    # why: a scenario that crashes is listed in the summary but writes no checks.json
    for line in output.splitlines():
        summary = _SUMMARY_LINE.match(line.strip())
        if summary and summary["scenario"] not in raw:
            raw[summary["scenario"]] = []
    return raw


def run_conformance(
    url: str,
    out_dir: Path,
    expected_failures: Iterable[str] | Path | None = None,
    *,
    scenario: str | None = None,
    suite: str | None = None,
    timeout: float = 180.0,
    requirements: str | None = None,
    tool: str = "conformance",
    scenario_timeout_ms: int | None = None,
) -> ConformanceResult:
    """Run `conformance server --url URL -o OUT_DIR` (Node 22) and return per-scenario verdicts.

    `expected_failures` is a list of scenario names or a baseline YAML file; by default the project's
    tests/conformance-expected-failures.yml (if it exists). `requirements` (e.g. "2026-07-28") runs
    exactly the scenarios that revision requires, scored and not scored, at its wire format; it needs
    `tool=NEXT_TOOL`. `scenario_timeout_ms` is the suite's own per-scenario limit (default 30 s).
    """
    binary = npm_tool(tool)
    node22()  # why: under Node 20 the suite dies on a globSync import; fail or skip with the install hint
    if expected_failures is None:
        expected = load_expected_failures()
    elif isinstance(expected_failures, Path):
        expected = load_expected_failures(expected_failures)
    else:
        expected = set(expected_failures)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out_dir.iterdir()}
    args = [binary, "server", "--url", url, "-o", str(out_dir)]
    if scenario:
        args += ["--scenario", scenario]
    if suite:
        args += ["--suite", suite]
    if requirements:
        args += ["--requirements", requirements]
    if scenario_timeout_ms is not None:
        args += ["--timeout", str(scenario_timeout_ms)]
    proc = subprocess.run(args, env=node22_env(), capture_output=True, text=True, timeout=timeout, cwd=out_dir)
    output = proc.stdout + proc.stderr
    raw = parse_results(out_dir, output, ignore=before)
    scenarios = {name: scenario_verdict(name, checks) for name, checks in raw.items()}
    all_checks = [c for checks in raw.values() for c in checks]
    return ConformanceResult(
        passed=sum(1 for s in scenarios.values() if s == "pass"),
        failed=sum(1 for s in scenarios.values() if s != "pass"),
        scenarios=scenarios,
        raw=raw,
        checks_passed=sum(1 for c in all_checks if c.get("status") == "SUCCESS"),
        checks_failed=sum(1 for c in all_checks if c.get("status") == "FAILURE"),
        expected_failures=expected,
        returncode=proc.returncode,
        output=output,
    )
