"""The README's promises are what CI proves: its test command is exactly what .ci/run executes."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_ci_runs_the_readme_test_command_verbatim():
    _setup_and_run, setup_and_test = quickstart_commands()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert setup_and_test in ci_lines
    assert setup_and_test.endswith("-m pytest")


def test_main_job_is_the_smoke_preset_with_the_same_setup():
    setup_and_run, setup_and_test = quickstart_commands()
    assert setup_and_run.endswith("sweeps/table1.py --preset smoke")
    setup = setup_and_test.rsplit("&&", 1)[0]
    assert setup_and_run.startswith(setup)
