"""Every command the README shows is run by a test: here, or by the test named for it.

The README's commands are read from it (its ``sh`` blocks and the code spans that
start with a command), so a command added to it without a test fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = ("edge-agent ", "bash scripts/", "python benchmarks/", "mosquitto_sub ", "mosquitto ",
            "docker ", "sudo bash deploy/", "rm -rf ", "apt install ", ". .venv/bin/activate",
            "pip install ")

#: README command (a regular expression on its text) → the tests that run it, as
#: ``file::test``. ``here`` means this file runs it.
RUN_BY = {
    r"bash scripts/demo\.sh": ["tests/test_readme.py::test_the_demo_runs_and_loses_nothing"],
    r"bash scripts/test\.sh": ["tests/test_setup_script.py::test_a_current_environment_is_not_installed_again"],
    r"edge-agent demo": ["tests/test_readme.py::test_the_demo_runs_and_loses_nothing"],
    r"edge-agent run --config agent\.toml": ["tests/test_agent.py::test_kill_9_at_random_points_then_restart_loses_and_relearns_nothing"],
    r"edge-agent run --config /etc/edge-agent/agent\.toml": ["tests/test_agent.py::test_agent_status_and_last_will"],
    r"edge-agent run --config deploy/agent\.local\.toml": ["tests/test_agent.py::test_the_local_try_it_config_against_a_stock_mosquitto"],
    r"edge-agent run --worker": ["tests/test_agent.py::test_two_workers_share_the_machines_and_raise_the_same_alerts"],
    r"edge-agent config check": ["tests/test_readme.py::test_config_check_of_the_example"],
    r"edge-agent replay sample_data/cwru/normal_0_97\.mat": ["tests/test_cli.py::test_the_readme_alert_example_is_what_replay_writes"],
    r"edge-agent replay RECORDING": ["tests/test_cli.py::test_replay_jsonl_verdicts_and_alerts"],
    r"edge-agent features": ["tests/test_cli.py::test_features_prints_documented_fields"],
    r"edge-agent alerts": ["tests/test_mqtt.py::test_alerts_command_prints_each_alert_once",
                           "tests/test_operator_reconnect.py::"
                           "test_alerts_says_when_the_connection_is_lost_and_regained"],
    r"edge-agent feedback": ["tests/test_feedback_mqtt.py::"
                             "test_feedback_round_trips_through_the_shipped_broker"],
    r"edge-agent report": ["tests/test_report.py::test_report_of_a_replay"],
    r"edge-agent fleet( keygen| prior|$)|edge-agent replay .*--prior": ["tests/test_fleet_prior.py::test_keygen_prior_and_replay_with_a_prior_on_real_recordings"],
    r"edge-agent fleet aggregate": ["tests/test_fleet_bridge.py::test_a_prior_crosses_the_bridge_is_used_and_a_30_s_cut_loses_no_update"],
    r"python benchmarks/fleet\.py": ["tests/test_fleet_prior.py::test_leave_one_out_monitored_at_once_damaged_alerted_and_poison_changes_nothing"],
    r"edge-agent --version": ["tests/test_cli.py::test_version_and_help_on_every_command"],
    r"mosquitto_sub -h localhost": ["tests/test_agent.py::test_the_local_try_it_config_against_a_stock_mosquitto"],
    r"mosquitto -p 1883": ["tests/test_agent.py::test_the_local_try_it_config_against_a_stock_mosquitto"],
    r"python benchmarks/evaluate\.py": ["tests/test_evaluation.py"],
    # Needs Docker, a registry or a Debian machine with systemd: deploy/verify.sh runs them.
    r"docker buildx build": ["deploy/verify.sh"],
    r"sudo bash deploy/verify\.sh": ["deploy/verify.sh"],
    # Set-up steps, not behaviour
    r"\. \.venv/bin/activate|pip install|apt install|rm -rf /tmp/edge-agent-local": [],
}


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    spans = re.findall(r"`([^`\n]+)`", README)
    found = [c for c in lines + spans if c.startswith(COMMANDS)]
    return list(dict.fromkeys(found))


def test_every_readme_command_has_a_test_and_the_tests_exist():
    commands = readme_commands()
    assert len(commands) >= 15, commands
    unrun = [c for c in commands if not any(re.match(p, c) for p in RUN_BY)]
    assert unrun == []
    for tests in RUN_BY.values():
        for test in tests:
            path, _, name = test.partition("::")
            assert (REPO / path).exists(), test
            if name:
                assert f"def {name}(" in (REPO / path).read_text(), test


def run_demo(*extra: str, env_code: str = "") -> subprocess.CompletedProcess:
    code = (f"import sys\n{env_code}\nfrom edge_agent.cli import main\n"
            f"sys.exit(main(['demo', *sys.argv[1:]]))")
    return subprocess.run([sys.executable, "-c", code, *extra], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_the_demo_runs_and_loses_nothing(broker):
    """The README's main job, with Mosquitto and with the embedded broker (no Mosquitto)."""
    no_mosquitto = ("import edge_agent.mqtt.embedded_broker as eb\n"
                    "eb.find_mosquitto = lambda: None" if broker == "embedded" else "")
    result = run_demo(env_code=no_mosquitto)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert ("Mosquitto" if broker == "mosquitto" else "amqtt") in out.splitlines()[1]
    published = int(re.search(r"(\d+) alerts published, (\d+) received", out).group(1))
    assert published >= 5 and f"{published} alerts published, {published} received" in out
    assert "none lost; 0 left in the outbox" in out
    for machine in ("femto-bearing1_2", "motor-1", "motor-2", "motor-3"):
        assert re.search(rf"operator got .*{machine}", out), machine


def test_config_check_of_the_example():
    result = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check",
                             "deploy/agent.example.toml"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deploy/agent.example.toml: OK")
