"""Soak, short: 32 channels in real time through a real Mosquitto; memory stays flat.

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


def test_32_channels_in_real_time_memory_stays_flat(tmp_path):
    # memory is measured for 30 s once every channel is monitoring (however long the
    # learning budget makes the warm-up on this machine, at most 240 s)
    result = run_soak(tmp_path, machines=16, channels=2, duration_s=30.0, warm_up_s=10.0,
                      warm_up_timeout_s=240.0, baseline_windows=10)
    report = result.report()
    print(report)
    assert result.exit_code == 0, report
    assert result.traced_growth <= 0.05, report  # a leak grows; a shrink is churn
    status = result.status["processing"]
    assert status["dropped_frames"] == 0, report
    assert status["windows"] >= 0.95 * result.sent, report
    assert result.status["lag_s"] is not None and result.status["lag_s"] < 10, report
    assert len(result.machine_docs) == 16 and result.monitored == 32, report
