"""``edge-agent report`` on real replays and on a live capture of the pipeline's own documents."""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import subprocess
import sys

import pytest

from edge_agent.cli import build_parser, main as cli_main
from edge_agent.errors import UsageError
from edge_agent.report.command import add_report_parser, report_command
from edge_agent.report.parse import epoch_s
from tests.conftest import REPO, SAMPLE_DATA

FEMTO = SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz"
CWRU = SAMPLE_DATA / "cwru"
MACHINE = "femto-bearing1_2"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATUS_TOPIC = re.compile(r"^plant/site1/line-a/[^/ ]+/status ")


def parse(*argv) -> argparse.Namespace:
    """The arguments of ``edge-agent report …``, parsed by the report's own parser."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_report_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["report", *map(str, argv)])


def run_report(*argv) -> int:
    """``edge-agent report …`` through the CLI once registered there, else its own parser."""
    if "report" in build_parser()._subparsers._group_actions[0].choices:  # noqa: SLF001
        return cli_main(["report", *map(str, argv)])
    return report_command(parse(*argv))


def replay(tmp_path_factory, name, *argv) -> tuple:
    path = tmp_path_factory.mktemp("replay") / f"{name}.jsonl"
    assert cli_main(["replay", *map(str, argv), "--jsonl", str(path), "--quiet"]) == 0
    return path, [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def femto(tmp_path_factory):
    """The FEMTO bearing's run to failure (sample), replayed: (JSONL path, documents)."""
    return replay(tmp_path_factory, "femto", FEMTO, "--baseline-windows", "60")


@pytest.fixture(scope="module")
def cwru(tmp_path_factory):
    """A CWRU motor, healthy then outer-race fault: undated (1970) windows."""
    return replay(tmp_path_factory, "cwru", CWRU / "normal_0_97.mat",
                  CWRU / "48k_Drive_End_OR007@6_0_135.mat", "--machine", "motor-3",
                  "--window-s", "0.2", "--hop-s", "0.1", "--baseline-windows", "20")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_self_contained(html: str) -> list[bytes]:
    """No external resource of any kind; returns the embedded images."""
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, re.IGNORECASE)
    assert links and not [u for u in links if re.match(r"(?i)(https?:)?//", u)]
    sources = re.findall(r"""\bsrc\s*=\s*["']([^"']+)""", html, re.IGNORECASE)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for construct in ("<script", "<link", "@import", "url(", "<iframe", "<object"):
        assert construct not in html.lower()
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources]


def assert_sensible_png(data: bytes, channels: int) -> None:
    width, height = png_size(data)
    assert 800 <= width <= 2400 and 250 * channels <= height <= 2400


def summary_of(text: str, machine: str) -> dict:
    """The ``key  value`` lines of one machine's block in the printed summary."""
    block = text.split(f"{machine}: ", 1)[1].split("\n\n")[0].splitlines()
    head, rest = block[0], block[1:]
    out = {"head": head}
    for line in rest:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition("  ")
        out[key] = value.strip()
    return out


def first_ts(alerts, severity):
    return next(a["ts"] for a in alerts if a["severity"] == severity)


def test_report_of_a_replay(femto, tmp_path, capsys):
    path, docs = femto
    alerts = [d for d in docs if d["kind"] == "alert"]
    verdicts = [d for d in docs if d["kind"] == "verdict"]
    assert {a["severity"] for a in alerts} >= {"warning", "alarm"}  # the bearing degrades
    out = tmp_path / "out"
    assert run_report(path, "--out", out, "--title", "Bearing 1-2 run to failure") == 0
    printed = capsys.readouterr().out

    html = (out / "report.html").read_text(encoding="utf-8")
    images = assert_self_contained(html)
    png = (out / f"{MACHINE}.png").read_bytes()
    trends = (out / f"{MACHINE}-trends.png").read_bytes()
    envelopes = [(out / f"{MACHINE}-A{i}-envelope.png").read_bytes()
                 for i in range(1, len(alerts) + 1)]
    assert images == [trends, png, *envelopes]  # each alert's spectrum in its section
    assert_sensible_png(png, channels=2)
    assert_sensible_png(trends, channels=4)
    assert "Bearing 1-2 run to failure" in html and MACHINE in html
    for alert in alerts:
        assert alert["id"] in html and alert["ts"] in html
        for feature in alert["features"]:
            assert feature["feature"] in html  # each top feature's row
    assert "ISO 20816-3 zone" in html

    summary = summary_of(printed, MACHINE)
    assert summary["head"].startswith(f"{len(verdicts)} windows on 2 channel(s)")
    assert summary["first warning"].startswith(first_ts(alerts, "warning") + ",")
    assert summary["first alarm"].startswith(first_ts(alerts, "alarm") + ",")
    assert summary["alerts"].startswith(f"{len(alerts)}")
    start = verdicts[0]["ts"][:10] + " " + verdicts[0]["ts"][11:19] + " UTC to "
    assert summary["time span"].startswith(start) and summary["baseline"].startswith(start)
    baseline_end = max(d["ts"] for d in verdicts if d["phase"] == "baselining")
    assert baseline_end[11:16] <= summary["baseline"].split(" to ")[1][:5]
    final = {d["channel"]: d["state"] for d in verdicts}  # the last verdict of each channel
    assert summary["final state"] == max(final.values(), key=("normal", "warning", "alarm").index)
    assert f"wrote {out / 'report.html'}" in printed


def capture(docs, run=None) -> list[str]:
    """What a subscriber to the alert and status topics saves while the pipeline runs.

    Status documents are built from the pipeline's verdicts with the agent's own
    builders, every 10th window and after every alert, like the agent publishes
    them; alerts come once as ``mosquitto_sub -v`` lines and once more as
    ``edge-agent alerts --json`` lines (a redelivery), the retained status
    arrives twice, the agent status is there too, and the capture ends mid-line. Each
    channel's status says what its baseline covered (from the whole ``run``, default
    ``docs``: a capture may start after the baseline) and its latest window's indicators.
    """
    from edge_agent.schema import agent_status_doc, channel_status, machine_status_doc
    from edge_agent.mqtt.topics import Topics

    topics = Topics("plant", "site1", "line-a")
    latest, lines = {}, [f"{topics.agent_status('gw-1')} "
                         + json.dumps(agent_status_doc("gw-1", "online", "0.1.0"))]

    baselining: dict = {}  # channel -> times of its baseline windows, as the agent counts them
    for doc in run or docs:
        if doc["kind"] == "verdict" and doc["phase"] == "baselining":
            baselining.setdefault(doc["channel"], []).append(epoch_s(doc["ts"]))

    def coverage(channel, v):
        times = baselining.get(channel) or [None]
        if v["phase"] == "baselining" or times[0] is None:
            return None
        return {"from_s": times[0], "to_s": times[-1], "windows": len(times),
                "running_h": (times[-1] - times[0]) / 3600.0, "complete": True}

    def status():
        channels = {ch: channel_status(
            phase=v["phase"], state=v["state"], baseline_progress=v["baseline_progress"],
            score=v["score"], threshold=v["threshold"], alarm_threshold=v["alarm_threshold"],
            regime=v.get("regime"), last_window_s=epoch_s(v["ts"]), windows=v["index"] + 1,
            sensor_health="ok", baseline=coverage(ch, v), indicators=v.get("indicators"))
            for ch, v in latest.items()}
        doc = machine_status_doc("gw-1", MACHINE, channels, outbox_depth=0, model_version=None)
        lines.append(f"{topics.machine_status(MACHINE)} {json.dumps(doc)}")

    for doc in docs:
        if doc["kind"] == "alert":
            alert = {k: v for k, v in doc.items() if k != "kind"}
            lines.append(f"{topics.alerts(MACHINE)} {json.dumps(alert)}")
            lines.append(json.dumps(alert))
            status()
        else:
            latest[doc["channel"]] = doc
            if len(latest) == 2 and doc["index"] % 10 == 9 and doc["channel"] == "vertical":
                status()
    status()
    first = next(i for i, line in enumerate(lines) if STATUS_TOPIC.search(line))
    lines.insert(first + 1, lines[first])  # the retained status again, on a re-subscribe
    return lines + [lines[-1][:60]]


def test_report_of_a_live_capture(femto, tmp_path, capsys):
    _, docs = femto
    alerts = [d for d in docs if d["kind"] == "alert"]
    windows = sum(d["kind"] == "verdict" for d in docs)
    path = tmp_path / "capture.txt"
    path.write_text("\n".join(capture(docs)) + "\n", encoding="utf-8")
    assert run_report(path) == 0  # default output: report/ beside the input
    captured = capsys.readouterr()
    assert "skipped 1 line(s)" in captured.err

    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    png = (tmp_path / "report" / f"{MACHINE}.png").read_bytes()
    images = assert_self_contained(html)
    assert images[1] == png and len(images) == 2 + len(alerts)  # trends, score, envelopes
    assert images[0] == (tmp_path / "report" / f"{MACHINE}-trends.png").read_bytes()
    assert_sensible_png(png, channels=2)
    assert all(a["id"] in html for a in alerts)
    summary = summary_of(captured.out, MACHINE)
    assert summary["head"].startswith(f"{windows} windows (")  # from the status documents
    assert summary["alerts"].startswith(f"{len(alerts)}:")  # the redelivery counted once
    assert summary["first warning"].startswith(first_ts(alerts, "warning") + ",")
    assert summary["first alarm"].startswith(first_ts(alerts, "alarm") + ",")


def test_a_capture_that_starts_after_the_baseline(femto, tmp_path, capsys):
    _, docs = femto
    monitoring = [d for d in docs if d["kind"] == "alert" or d.get("phase") != "baselining"]
    path = tmp_path / "late.txt"
    path.write_text("\n".join(capture(monitoring, docs)) + "\n", encoding="utf-8")
    assert run_report(path) == 0
    summary = summary_of(capsys.readouterr().out, MACHINE)
    # the statuses say what the baseline covered: not "none" (as it was before)
    baselining = [d for d in docs if d.get("phase") == "baselining"
                  and d["channel"] == "horizontal"]
    start = baselining[0]["ts"][:10] + " " + baselining[0]["ts"][11:19] + " UTC to "
    assert summary["baseline"].startswith(start), summary["baseline"]
    assert f"; {len(baselining)} windows, " in summary["baseline"]
    assert "again" not in summary["baseline"]


def test_undated_recording_and_machine_selection(femto, cwru, tmp_path, capsys):
    both = tmp_path / "both.jsonl"
    both.write_text(femto[0].read_text() + cwru[0].read_text())
    out = tmp_path / "out"
    assert run_report(both, "--out", out, "--machine", "motor-3") == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["motor-3-A1-envelope.png", "motor-3-trends.png",
                                                      "motor-3.png", "report.html"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert MACHINE not in html and "motor-3" in html
    summary = summary_of(printed, "motor-3")
    assert "carries no date" in summary["time span"] and summary["time span"].startswith("+0 s")
    alarm = first_ts([d for d in cwru[1] if d["kind"] == "alert"], "alarm")
    assert alarm.startswith("1970-01-01T") and summary["first alarm"].startswith(alarm)
    assert_sensible_png((out / "motor-3.png").read_bytes(), channels=2)

    with pytest.raises(UsageError, match="no machine pump-9 in the input; it has femto"):
        report_command(parse(both, "--out", out, "--machine", "pump-9"))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        report_command(parse(tmp_path / "missing.jsonl"))
    empty = tmp_path / "other.jsonl"
    empty.write_text('{"schema": "edge-agent/agent-status/1", "agent": "gw-1"}\n')
    with pytest.raises(UsageError, match="no verdicts, alerts or machine status with a window"):
        report_command(parse(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"kind": "verdict", "machine": "m"}\n')
    with pytest.raises(UsageError, match=r"broken.jsonl:1: not a valid edge-agent document"):
        report_command(parse(broken))


def test_without_matplotlib_the_error_says_what_to_install(femto, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'edge-agent\[report\]'"):
        report_command(parse(femto[0], "--out", tmp_path))


def test_other_commands_do_not_import_matplotlib():
    code = ("import sys, edge_agent.cli, edge_agent.report.command; edge_agent.cli.build_parser(); "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60, check=True)
    assert result.stdout.strip() == "False"


# -- the physical figures: what is drawn, read back from the figures' artists ----------------------
def _extent(patch, axis: int) -> tuple[float, float]:
    """Data extent of a span along x (0) or y (1): a Rectangle or a Polygon, by version."""
    if hasattr(patch, "get_width"):
        start = patch.get_x() if axis == 0 else patch.get_y()
        size = patch.get_width() if axis == 0 else patch.get_height()
        return start, start + size
    values = [xy[axis] for xy in patch.get_xy()]
    return min(values), max(values)


def _zones(ax):
    """ISO zone bands of the velocity panel: {zone: (low, high)} in mm/s."""
    out = {}
    for patch in ax.patches:
        gid = patch.get_gid() or ""
        if gid.startswith("iso-zone-"):
            lo, hi = _extent(patch, 1)
            out[gid[-1]] = (round(lo, 3), round(hi, 3))
    return out


def _lines(ax):
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def _labels(ax):
    return {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("alert-")}


def _figures(path):
    from edge_agent.report.facts import facts
    from edge_agent.report.parse import load
    from edge_agent.report.physical import envelope_figure, trends_figure

    machine = next(iter(load(str(path)).values()))
    f = facts(machine)
    return machine, f, trends_figure(machine, f), [
        envelope_figure(machine, i, a) for i, a in enumerate(machine.alerts, 1)]


def test_trends_and_envelope_figures_of_a_cwru_replay(cwru, tmp_path, capsys):
    """Zones at the machine's ISO limits, the baseline marked, the alert numbered at its
    time, the defect lines at the alert's frequencies over its own spectrum data."""
    from edge_agent.report.html import TimeAxis
    from edge_agent.report.physical import trends_name

    path, docs = cwru
    alerts = [d for d in docs if d["kind"] == "alert"]
    verdicts = [d for d in docs if d["kind"] == "verdict"]
    machine, f, trends, envelopes = _figures(path)
    rms, velocity, shape, lines = trends.axes
    assert _zones(velocity) == {"A": (0.0, 1.4), "B": (1.4, 2.8), "C": (2.8, 4.5),
                                "D": (4.5, max(4.5 * 1.25, velocity.get_ylim()[1]))}
    assert "group 2, rigid foundation" in velocity.get_title(loc="left")
    drawn = _lines(velocity)["velocity_rms_mm_s/de"].get_ydata()
    assert [y for y in drawn if y == y] == pytest.approx(  # NaN: a gap is not bridged
[v["indicators"]["velocity_rms_mm_s"]
                                         for v in verdicts if v["channel"] == "de"])
    assert set(_lines(lines)) >= {"env_bpfo_g/de", "env_bpfi_g/de", "env_bsf_g/de"}
    assert {"sustained_kurtosis/de", "sustained_crest_factor/de"} <= set(_lines(shape))
    axis = TimeAxis.for_facts(f)
    baseline = [p for p in rms.patches if p.get_gid() == "baseline"][0]
    xs = _extent(baseline, 0)
    last_baselining = max(epoch_s(v["ts"]) for v in verdicts if v["phase"] == "baselining")
    assert min(xs) == pytest.approx(axis.x(epoch_s(verdicts[0]["ts"])))
    assert max(xs) >= axis.x(last_baselining)
    label = _labels(rms)["alert-A1"]
    assert label.get_text() == "A1" and label.xy[0] == pytest.approx(axis.x(epoch_s(alerts[0]["ts"])))

    spectrum = alerts[0]["envelope_spectrum"]
    assert len(spectrum["window_g"]) <= 400 and len(spectrum["baseline_g"]) == len(
        spectrum["window_g"])
    window, base = envelopes[0].axes
    assert list(_lines(window)["spectrum/alert's"].get_ydata()) == spectrum["window_g"]
    assert list(_lines(base)["spectrum/baseline"].get_ydata()) == spectrum["baseline_g"]
    marked = _lines(window)
    bpfo = spectrum["lines_hz"]["bpfo"]
    for h in (1, 2, 3):
        assert marked[f"line-bpfo-{h}x"].get_xdata()[0] == pytest.approx(h * bpfo)
    assert "line-ftf-2x" not in marked and "line-ftf-1x" in marked
    # outer-race fault: the BPFO line of the alert's window stands far above the baseline's
    k = round(bpfo / spectrum["df_hz"]) - 1
    assert max(spectrum["window_g"][k - 1:k + 2]) > 20 * max(spectrum["baseline_g"][k - 1:k + 2])

    out = tmp_path / "out"
    assert run_report(path, "--out", out) == 0
    printed = capsys.readouterr().out
    summary = summary_of(printed, "motor-3")
    assert list(summary)[3:5] == ["first alarm", "first warning"]  # in the order they came
    assert summary["baseline"].endswith("; 20 windows, 0.00053 h of running")  # 19 × 0.1 s
    assert summary["feedback"] == "none"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "BPFO" in html and "none rose 3 times" not in html  # its defect line is named
    assert_sensible_png((out / trends_name("motor-3.png")).read_bytes(), channels=4)


def test_physical_figures_of_a_live_capture_with_feedback(femto, tmp_path, capsys):
    """From status samples and alerts alone: trends from the statuses' indicators, the
    envelope spectra from the alerts; the alarm shading ends with the data; an operator's
    label on an alert is in the summary and on the page."""
    _, docs = femto
    alerts = [d for d in docs if d["kind"] == "alert"]
    labelled = dict(alerts[0], feedback=[{"alert_id": alerts[0]["id"], "label": "confirmed",
                                          "user": "ana", "note": "bearing noise heard",
                                          "ts_s": epoch_s(alerts[0]["ts"])}])
    later = [d if d is not alerts[-1] else dict(d, feedback=labelled["feedback"]) for d in docs]
    path = tmp_path / "capture.txt"
    path.write_text("\n".join(capture(later)) + "\n", encoding="utf-8")
    machine, f, trends, envelopes = _figures(path)
    rms, velocity, _, _ = trends.axes
    statuses = [line for line in capture(later) if STATUS_TOPIC.search(line)]
    assert len(_lines(rms)["rms_g/horizontal"].get_xdata()) == len(
        machine.channels["horizontal"].t) < len(statuses) + 1
    assert set(_zones(velocity)) == {"A", "B", "C", "D"}
    assert all(e is not None for e in envelopes) and len(envelopes) == len(alerts)
    assert set(_labels(rms)) == {f"alert-A{i}" for i in range(1, len(alerts) + 1)}
    # the score figure's state shading never runs past the last sample
    from edge_agent.report.facts import runs
    for series in machine.channels.values():
        spans = runs(series.t, [s == "alarm" for s in series.state], *series.step_and_gap())
        assert spans and max(b for _, b in spans) <= series.t[-1]
    assert run_report(path, "--out", tmp_path / "out") == 0
    summary = summary_of(capsys.readouterr().out, MACHINE)
    assert summary["feedback"] == 'A1 confirmed by ana ("bearing noise heard")'
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Operator's label: confirmed</b> by ana" in html
    # the sentence for alerts without a named defect line states the ×3 rule
    assert ("none rose 3 times" in html) == any(not a["fault_lines"] for a in alerts)
