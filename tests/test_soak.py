"""Soak, short: 64 channels in real time through a real Mosquitto; memory stays flat.

The long soak (256 channels, 4 minutes, with resident-memory peaks) is
``python benchmarks/soak.py`` (figures in benchmarks/README.md). Here memory is judged
by what Python and NumPy hold (tracemalloc in the agent process), which a leak raises
and the allocator's page churn on a loaded machine does not; resident memory is
reported, not asserted.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.slow


def test_64_channels_in_real_time_memory_stays_flat(tmp_path):
    result = run_soak(tmp_path, machines=32, channels=2, duration_s=75.0, warm_up_s=30.0,
                      baseline_windows=20)
    report = result.report()
    print(report)
    assert result.exit_code == 0, report
    assert result.traced_growth <= 0.05, report  # a leak grows; a shrink is churn
    status = result.status["processing"]
    assert status["dropped_frames"] == 0, report
    assert status["windows"] >= 0.95 * result.sent, report
    assert result.status["lag_s"] is not None and result.status["lag_s"] < 10, report
    assert len(result.machine_docs) == 32 and result.monitored == 64, report
