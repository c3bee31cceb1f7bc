"""The README's promises: CI runs exactly the README's test command, and the quick start is two
commands."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quick_start_is_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _quick_start_commands()[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f"{test_command!r} is not a line of .ci/run"


SYSTEM_COMMAND = ".venv/bin/python -m pytest -m system"


def test_ci_also_runs_the_system_tests_the_readme_names():
    """The end-to-end tests are left out of the quick start's command (pyproject's addopts), so
    the README must name the command that runs them, and CI must run it too."""
    readme = (ROOT / "README.md").read_text()
    assert SYSTEM_COMMAND in readme
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert SYSTEM_COMMAND in ci_lines
    assert "-m 'not system'" in (ROOT / "pyproject.toml").read_text()
