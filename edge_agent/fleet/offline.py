"""Member summaries from recordings: commissioning a fleet prior from healthy siblings.

Each recording is one member machine; its first ``baseline_windows`` running
windows (per channel) are its healthy baseline, fitted exactly as the agent
fits one, and the summary is what that agent would share.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.errors import UsageError
from edge_agent.models.detector import DetectorConfig
from edge_agent.models.prior import MemberSummary, merge_channels, summary_from_detector
from edge_agent.runtime.pipeline import Pipeline


def member_from_records(records: Iterable, *, class_name: str, config: DetectorConfig,
                        machine: str | None = None, with_autoencoder: bool = True,
                        source: str = "the recording") -> MemberSummary:
    """The summary of the machine of ``records`` (``(index, FeatureRecord)`` pairs of one
    machine), once every channel seen has fitted its baseline; reading stops there."""
    return member_from_pipeline(fitted_pipeline(records, config=config, source=source),
                                class_name=class_name, machine=machine,
                                with_autoencoder=with_autoencoder)


def member_from_pipeline(pipeline: Pipeline, *, class_name: str, machine: str | None = None,
                         with_autoencoder: bool = True) -> MemberSummary:
    """The summary of the one machine of a :func:`fitted_pipeline`."""
    name = machine or next(iter(pipeline.detectors))[0]
    return merge_channels({ch: summary_from_detector(d, class_name=class_name, machine=name,
                                                     channel=ch,
                                                     with_autoencoder=with_autoencoder)
                           for ch, d in member_detectors(pipeline).items()})


def member_detectors(pipeline: Pipeline) -> dict:
    """``{channel: detector}`` of a one-machine pipeline, the channel ``None`` when it has
    only one (its features then unqualified)."""
    several = len(pipeline.detectors) > 1
    return {ch if several else None: d for (_, ch), d in pipeline.detectors.items()}


def fitted_pipeline(records: Iterable, *, config: DetectorConfig,
                    source: str = "the recording") -> Pipeline:
    """A pipeline that has read ``records`` of one machine until every channel seen has
    fitted its baseline; a ``UsageError`` naming ``source`` when it holds several machines
    or no complete baseline."""
    pipeline = Pipeline(config)
    done_at = None  # the window at which every channel seen had fitted its baseline
    for index, record in records:
        if done_at is not None and index > done_at:
            break  # every channel of that window has been seen: nothing more to learn
        pipeline.process(record, index)
        if done_at is None and all(d.fitted for d in pipeline.detectors.values()):
            done_at = index
    machines = {m for m, _ in pipeline.detectors}
    if len(machines) > 1:
        raise UsageError(f"{source} holds several machines ({', '.join(sorted(machines))}): "
                         "give one recording per member machine")
    unfitted = [ch for (_, ch), d in pipeline.detectors.items()
                if not d.fitted]
    if not pipeline.detectors or unfitted:
        raise UsageError(f"{source}: no complete baseline of {config.baseline_windows} running "
                         f"windows{' on ' + ', '.join(unfitted) if unfitted else ''}; give a "
                         "longer recording or a smaller --baseline-windows")
    return pipeline
