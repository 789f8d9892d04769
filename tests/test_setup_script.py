"""scripts/_setup.sh installs once: a second demo or test run does not reinstall."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

STAMP = REPO / ".venv" / ".edge-agent-installed"


def setup(extras: str) -> subprocess.CompletedProcess:
    # PIP_NO_INDEX: a pip install that ran would have to fetch the build backend and fail,
    # so a zero exit proves that nothing was installed.
    env = {**os.environ, "EXTRAS": extras, "PIP_NO_INDEX": "1"}
    return subprocess.run(["bash", "-c", "source scripts/_setup.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def stamp():
    if not STAMP.exists():
        pytest.skip("the suite is not running in the .venv that scripts/test.sh made")
    saved = STAMP.read_text()
    yield saved
    STAMP.write_text(saved)


def test_a_current_environment_is_not_installed_again(stamp):
    installed = stamp.split()[1]
    assert setup(installed).returncode == 0  # the same extras ...
    assert setup(installed.split(",")[0]).returncode == 0  # ... or fewer: nothing to do
    assert STAMP.read_text() == stamp


def test_a_changed_pyproject_or_missing_extra_installs_again(stamp, tmp_path):
    assert shutil.which("bash")
    STAMP.write_text("0" * 64 + " " + stamp.split()[1] + "\n")  # as if pyproject changed
    result = setup(stamp.split()[1])
    assert result.returncode != 0 and "pip" in result.stderr.lower()  # it tried to install
    STAMP.write_text(stamp)
    assert setup(stamp.split()[1] + ",no-such-extra").returncode != 0
