"""Online learners of a machine's healthy state.

Depends on nothing of ours but plain arrays and feature names: the runtime
feeds feature dicts in and reads verdicts out.
"""

from edge_agent.models.detector import (ChannelDetector, Contribution, DetectorConfig,
                                        RegimeModel, Verdict)

__all__ = ["ChannelDetector", "Contribution", "DetectorConfig", "RegimeModel", "Verdict"]
