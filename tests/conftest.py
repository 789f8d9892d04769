"""Shared test helpers: where the real recordings are, and loaders that bypass our readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
#: The full recordings; CI checks the project out with ../shared beside it.
SHARED_DATA = REPO.parent / "shared" / "data"

CWRU_FILES = {
    "normal": "normal_0_97.mat",
    "inner_race": "48k_Drive_End_IR007_0_109.mat",
    "ball": "48k_Drive_End_B007_0_122.mat",
    "outer_race": "48k_Drive_End_OR007@6_0_135.mat",
}


def shared(*parts: str) -> Path:
    """A file under ../shared/data; fails with a clear message when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"real recording {path} is missing: the tests expect the project's "
                    f"shared data checked out beside the repository (../shared/data)")
    return path


def load_cwru_de(condition: str) -> tuple[np.ndarray, float]:
    """Drive-end acceleration (float32, g) and rpm of a full CWRU 48 kHz recording,
    read with scipy directly so DSP tests do not depend on our readers."""
    import scipy.io

    mat = scipy.io.loadmat(shared("cwru", "48k_drive_end_0hp", CWRU_FILES[condition]))
    de = next(v for k, v in mat.items() if k.endswith("DE_time"))
    rpm = next(v for k, v in mat.items() if k.endswith("RPM"))
    return de.ravel().astype(np.float32), float(rpm.ravel()[0])


@pytest.fixture(scope="session")
def femto_horizontal():
    """Feature records of FEMTO Bearing1_2's horizontal channel (871 snapshots)."""
    from edge_agent.runtime.inputs import InputOptions, feature_records

    options = InputOptions(recordings=(shared("femto", "femto_learning_Bearing1_2.npz"),),
                           channels=frozenset({"horizontal"}))
    return [rec for _, rec in feature_records(options)]
