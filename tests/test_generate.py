"""The generator is seeded and reproducible, and the committed sample is its output."""

import json
from pathlib import Path

from helpers import SAMPLE

from pipelines.generate import Profile, default_campaigns, generate


def _lines(folder: Path) -> list[str]:
    return [ln for f in sorted(folder.glob("events-*.jsonl")) for ln in f.read_text().splitlines()]


def test_the_committed_sample_is_the_seeded_output(tmp_path: Path):
    truth = generate(Profile.sample(), tmp_path / "landing", quiet=True)
    assert _lines(tmp_path / "landing") == _lines(SAMPLE / "events")
    assert json.loads(truth.to_json()) == json.loads((SAMPLE / "ground_truth.json").read_text())


def test_another_seed_gives_other_events(tmp_path: Path):
    generate(Profile(events=500, seed=1), tmp_path / "a", quiet=True)
    generate(Profile(events=500, seed=2), tmp_path / "b", quiet=True)
    assert _lines(tmp_path / "a") != _lines(tmp_path / "b")


def test_truth_accounts_for_every_line(tmp_path: Path):
    truth = generate(Profile(events=3000, seed=5, lines_per_file=700), tmp_path / "l", quiet=True)
    lines = _lines(tmp_path / "l")
    assert len(lines) == truth.lines
    assert truth.files == len(list((tmp_path / "l").glob("events-*.jsonl"))) == 5
    assert truth.lines == (truth.valid_unique_events + truth.duplicate_deliveries
                           + truth.malformed_lines)
    assert sum(truth.malformed_by_reason.values()) == truth.malformed_lines
    assert not list((tmp_path / "l").glob(".*"))  # no half-written files left behind


def test_the_sample_has_what_the_brief_asks_for():
    truth = json.loads((SAMPLE / "ground_truth.json").read_text())
    assert len(truth["campaigns"]) >= 20
    assert truth["weak_campaigns"]["click_to_cart"] == ["cmp_07"]
    assert {b["rule"] for b in truth["fraud_bursts"]} == {"R1", "R2", "R3"}
    assert 0.005 < truth["duplicate_deliveries"] / truth["valid_unique_events"] < 0.02
    assert 0.002 < truth["malformed_lines"] / truth["lines"] < 0.01
    assert len(set(truth["malformed_by_reason"])) >= 6
    assert truth["late_events"] > 0
    assert (SAMPLE / "events").stat().st_size < 5_000_000


def test_weak_campaign_profiles_are_below_the_alert_thresholds():
    weak = {c.campaign_id: c for c in default_campaigns()}
    assert weak["cmp_07"].click_to_cart < 0.2
    assert all(c.click_to_cart > 0.3 for c in weak.values() if c.campaign_id != "cmp_07")
