"""A seeded, reproducible synthetic clickstream with its ground truth.

The generator simulates journeys (one ``tracking_id`` each) for a set of campaigns with
different conversion profiles, plus organic visits, fraud bots (one kind per rule R1-R3),
anomalies that no rule catches (scrapers, card testers, sessions faster than human,
impossible travel),
clickers who never buy and cart abandoners. It then simulates delivery: arrival jitter
(out of order), duplicate deliveries, events later than the watermark and malformed lines.
Lines are written in arrival order into rotated JSON-lines files; the ground truth (what
was injected, counted by the generator itself) goes to a separate JSON file.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.inject import anomalies, bots, home_ip, malformed, violations

START = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
WATERMARK = timedelta(minutes=10)
GROUND_TRUTH = "ground_truth.json"


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    weight: float
    ctr: float  # impression -> click
    p_land: float  # click -> landing page view
    p_cart: float  # landing -> add to cart
    p_checkout: float  # cart -> checkout start
    p_purchase: float  # checkout -> purchase
    price: float  # mean item price
    flight: tuple[float, float] = (0.0, 1.0)  # active part of the span, as fractions

    @property
    def click_to_cart(self) -> float:
        return self.p_land * self.p_cart


def default_campaigns() -> list[Campaign]:
    """22 campaigns. cmp_07 converts clicks to carts badly (~8%); cmp_13 is rarely clicked
    (~0.8% CTR) and runs only in the first half of the span. The rest are healthy."""
    rng = random.Random(7)
    out = []
    for i in range(1, 23):
        out.append(Campaign(
            campaign_id=f"cmp_{i:02d}",
            weight=round(rng.uniform(0.6, 1.6), 2),
            ctr=round(rng.uniform(0.25, 0.45), 3),
            p_land=round(rng.uniform(0.85, 0.97), 3),
            p_cart=round(rng.uniform(0.40, 0.70), 3),
            p_checkout=round(rng.uniform(0.45, 0.80), 3),
            p_purchase=round(rng.uniform(0.30, 0.85), 3),
            price=round(rng.uniform(8, 120), 2),
        ))
    out[6] = Campaign("cmp_07", weight=3.2, ctr=0.40, p_land=0.80, p_cart=0.10,
                      p_checkout=0.5, p_purchase=0.5, price=35.0)
    out[12] = Campaign("cmp_13", weight=14.0, ctr=0.008, p_land=0.9, p_cart=0.5,
                       p_checkout=0.6, p_purchase=0.6, price=60.0, flight=(0.0, 0.5))
    return out


@dataclass(frozen=True)
class Profile:
    """How much to generate."""

    events: int = 14_000  # valid journey events, before bots, duplicates and malformed lines
    hours: float = 2.0
    users_per_journey: float = 0.4  # fewer users than journeys: users come back
    organic_share: float = 0.06
    bots_per_rule: int = 3
    duplicate_rate: float = 0.01
    late_rate: float = 0.003
    malformed_rate: float = 0.005
    lines_per_file: int = 2_000
    seed: int = 42
    violations: int = 0  # per kind: contract-valid events that break a quality expectation
    start: datetime = START  # event times fall in [start, start + hours]
    id_prefix: str = ""  # prepended to every generated id, so two runs can share a lake

    @staticmethod
    def sample() -> Profile:
        return Profile()

    @staticmethod
    def large(events: int) -> Profile:
        return Profile(events=events, hours=max(2.0, events / 40_000), bots_per_rule=10,
                       lines_per_file=50_000)


@dataclass
class Truth:
    """What the generator injected. Tests compare the pipeline's tables to these numbers."""

    seed: int
    lines: int = 0
    files: int = 0
    valid_unique_events: int = 0
    duplicate_deliveries: int = 0
    late_events: int = 0
    malformed_lines: int = 0
    malformed_by_reason: Counter = field(default_factory=Counter)
    events_by_type: Counter = field(default_factory=Counter)
    journeys: int = 0
    organic_journeys: int = 0
    weak_campaigns: dict[str, list[str]] = field(default_factory=dict)
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    fraud_bursts: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    late_event_ids: list[str] = field(default_factory=list)
    cart_abandoners: list[dict[str, Any]] = field(default_factory=list)
    retarget_offers: list[dict[str, Any]] = field(default_factory=list)
    quality_violations: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(data, indent=1, sort_keys=True)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class _World:
    """Random state shared by the journey builders."""

    def __init__(self, profile: Profile, campaigns: list[Campaign]):
        self.p = profile
        self.rng = random.Random(profile.seed)
        self.campaigns = campaigns
        self.span = timedelta(hours=profile.hours)
        self.n_users = max(10, int(profile.events / 3.5 * profile.users_per_journey))
        self.products = [f"sku_{i:04d}" for i in range(1, 401)]
        self.counter = 0
        self.agents = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) Safari/604.1",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Firefox/133.0",
            "Mozilla/5.0 (Linux; Android 15; Pixel 9) Chrome/131.0 Mobile",
        ]
        # Zipf-like user popularity: a few users make many journeys.
        weights = [1.0 / (i + 10) for i in range(self.n_users)]
        self.user_cum = _cumulative(weights)

    def new_id(self, prefix: str, rng: random.Random | None = None) -> str:
        self.counter += 1
        return f"{self.p.id_prefix}{prefix}{self.counter:08x}{(rng or self.rng).getrandbits(24):06x}"

    def user(self) -> tuple[str, str]:
        u = bisect.bisect_left(self.user_cum, self.rng.random() * self.user_cum[-1])
        return f"u{u:06d}", home_ip(u)

    def event(self, etype: str, t: datetime, user: tuple[str, str], tracking_id: str,
              rng: random.Random | None = None, **extra: Any) -> dict[str, Any]:
        ev = {"event_id": self.new_id("e", rng), "event_type": etype, "event_time": _iso(t),
              "user_id": user[0], "tracking_id": tracking_id, "ip": user[1],
              "user_agent": self.agents[int(user[0][-3:]) % len(self.agents)]}
        ev.update(extra)
        return ev


def _cumulative(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _journey(w: _World, camp: Campaign | None, t: datetime) -> list[dict[str, Any]]:
    """One journey's events in event-time order. ``camp`` None is an organic visit."""
    rng, user, tid = w.rng, w.user(), w.new_id("t")
    evs: list[dict[str, Any]] = []
    if camp is not None:
        ad = {"campaign_id": camp.campaign_id, "ad_id": f"{camp.campaign_id}_ad{rng.randint(1, 3)}"}
        evs.append(w.event("ad_impression", t, user, tid, **ad))
        if rng.random() >= camp.ctr:
            return evs
        t += timedelta(seconds=rng.uniform(1, 30))
        evs.append(w.event("ad_click", t, user, tid, **ad))
        p_land, p_cart, p_co, p_buy, price = (camp.p_land, camp.p_cart, camp.p_checkout,
                                              camp.p_purchase, camp.price)
    else:
        p_land, p_cart, p_co, p_buy, price = 1.0, 0.3, 0.5, 0.6, 40.0
    if rng.random() >= p_land:
        return evs
    t += timedelta(seconds=rng.uniform(0.5, 5))
    extra = {"page_url": f"/landing/{tid[-4:]}"} if rng.random() < 0.1 else {}
    evs.append(w.event("landing_page_view", t, user, tid, **extra))
    if rng.random() >= p_cart:
        return evs
    # A quarter of the carts are big (3-5 adds); big carts are abandoned unless small again.
    big = rng.random() < 0.25
    basket = []
    for _ in range(rng.randint(3, 5) if big else rng.randint(1, 3)):
        t += timedelta(seconds=rng.uniform(5, 60))
        item = {"product_id": rng.choice(w.products), "quantity": rng.randint(1, 3),
                "price": round(max(0.5, rng.gauss(price, price / 4)), 2)}
        basket.append(item)
        evs.append(w.event("add_to_cart", t, user, tid, **item))
    if big or rng.random() >= p_co:
        return evs
    # Checkout and purchase carry one event per basket line (product, unit price, quantity).
    for etype, p_step in (("checkout_start", 1.0), ("purchase", p_buy)):
        if rng.random() >= p_step:
            return evs
        t += timedelta(seconds=rng.uniform(5, 90))
        for k, item in enumerate(basket):
            evs.append(w.event(etype, t + timedelta(milliseconds=k), user, tid, **item))
    return evs


def _events(w: _World, truth: Truth, progress: Progress) -> list[dict[str, Any]]:
    """All valid events: campaign and organic journeys, then the bots and the anomalies."""
    rng, p = w.rng, w.p
    task = progress.add_task("journeys", total=p.events)
    evs: list[dict[str, Any]] = []
    while len(evs) < p.events:
        frac = rng.random()
        t = p.start + w.span * frac
        active = [c for c in w.campaigns if c.flight[0] <= frac < c.flight[1]]
        camp = None
        if rng.random() >= p.organic_share:
            camp = rng.choices(active, weights=[c.weight for c in active])[0]
        journey = _journey(w, camp, t)
        truth.journeys += 1
        truth.organic_journeys += camp is None
        evs += journey
        progress.advance(task, len(journey))
    evs += bots(w, truth)
    evs += anomalies(w, truth)
    truth.cart_abandoners = _abandoners(evs)
    truth.retarget_offers = _offers(evs)
    return evs


def _offers(evs: list[dict[str, Any]], wait: timedelta = timedelta(minutes=10),
            cooldown: timedelta = timedelta(hours=24)) -> list[dict[str, Any]]:
    """Clicks not followed by the user's purchase within ``wait``; then, per user and
    campaign, the first such click and any later one ``cooldown`` after the last offer."""
    buys: dict[str, list[datetime]] = {}
    for ev in evs:
        if ev["event_type"] == "purchase":
            buys.setdefault(ev["user_id"], []).append(datetime.fromisoformat(ev["event_time"]))
    clicks = sorted((ev for ev in evs if ev["event_type"] == "ad_click"),
                    key=lambda e: (e["user_id"], e["campaign_id"], e["event_time"], e["tracking_id"]))
    last: dict[tuple[str, str], datetime] = {}
    out = []
    for ev in clicks:
        t = datetime.fromisoformat(ev["event_time"])
        if any(t < b <= t + wait for b in buys.get(ev["user_id"], [])):
            continue
        key = (ev["user_id"], ev["campaign_id"])
        if key in last and t - last[key] < cooldown:
            continue
        last[key] = t
        out.append({"user_id": ev["user_id"], "campaign_id": ev["campaign_id"],
                    "tracking_id": ev["tracking_id"], "click_time": ev["event_time"]})
    return out


def _abandoners(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Journeys with 3 or more adds to cart and no purchase (a journey never pauses longer
    than a session gap, so each is one session)."""
    adds: dict[str, list[dict[str, Any]]] = {}
    bought: set[str] = set()
    last: dict[str, str] = {}
    for ev in evs:
        last[ev["tracking_id"]] = max(last.get(ev["tracking_id"], ""), ev["event_time"])
        if ev["event_type"] == "add_to_cart":
            adds.setdefault(ev["tracking_id"], []).append(ev)
        elif ev["event_type"] == "purchase":
            bought.add(ev["tracking_id"])
    return [{"tracking_id": tid, "user_id": items[0]["user_id"], "adds": len(items),
             "products": sorted({e["product_id"] for e in items}),
             "add_event_ids": [e["event_id"] for e in items], "last_event_time": last[tid]}
            for tid, items in sorted(adds.items()) if len(items) >= 3 and tid not in bought]


def _deliver(w: _World, evs: list[dict[str, Any]], truth: Truth) -> list[str]:
    """Delivery as a producer would do it: jittered arrival (so out of order), some events
    later than the watermark, duplicate deliveries and malformed lines. Lines in arrival order."""
    rng, p = w.rng, w.p
    arrivals: list[tuple[datetime, int, str]] = []
    for i, ev in enumerate(evs):
        t = datetime.fromisoformat(ev["event_time"])
        line = json.dumps(ev, separators=(",", ":"))
        if rng.random() < p.late_rate:
            arrival = t + timedelta(minutes=rng.uniform(15, 90))
            truth.late_events += 1
            truth.late_event_ids.append(ev["event_id"])
        else:
            arrival = t + timedelta(seconds=min(60.0, rng.expovariate(0.5)))
            if rng.random() < p.duplicate_rate:
                again = arrival + timedelta(seconds=rng.uniform(0.5, 120))
                arrivals.append((again, i, line))
                truth.duplicate_deliveries += 1
        arrivals.append((arrival, i, line))
        if rng.random() < p.malformed_rate:
            bad, reason = malformed(w, ev)
            arrivals.append((arrival, i, bad))
            truth.malformed_lines += 1
            truth.malformed_by_reason[reason] += 1
        truth.events_by_type[ev["event_type"]] += 1
    truth.valid_unique_events = len(evs)
    arrivals.sort(key=lambda a: (a[0], a[1]))
    lines = [line for _, _, line in arrivals]
    for kind, bad in violations(w, evs, p.violations).items():
        truth.quality_violations[kind] = [json.loads(b)["event_id"] for b in bad]
        for b in bad:
            lines.insert(rng.randrange(len(lines) + 1), b)
    return lines


def land(files: list[Path], out: Path, prefix: str = "") -> list[Path]:
    """Copy ``files`` into the landing folder ``out`` in order, each under a dot-name then
    renamed (to ``prefix`` + its name), with modification times one second apart: Spark's
    file source reads files oldest first, so this keeps arrival order even when the copies
    land in the same second."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time() - len(files)
    landed = []
    for i, f in enumerate(files):
        final = out / f"{prefix}{f.name}"
        tmp = out / f".{final.name}.tmp"
        shutil.copyfile(f, tmp)
        os.utime(tmp, (start + i, start + i))
        tmp.rename(final)
        landed.append(final)
    return landed


def _write(lines: list[str], out: Path, per_file: int, progress: Progress) -> int:
    """Rotated JSON-lines files, each written under a dot-name then renamed (readers skip
    dot-files, so a half-written file is never read)."""
    out.mkdir(parents=True, exist_ok=True)
    task = progress.add_task("files", total=len(lines))
    existing = len(list(out.glob("events-*.jsonl")))
    n = 0
    first_mtime = time.time() - len(lines) / per_file - 1
    for n, start in enumerate(range(0, len(lines), per_file), start=1):
        chunk = lines[start:start + per_file]
        final = out / f"events-{existing + n:06d}.jsonl"
        tmp = out / f".{final.name}.tmp"
        tmp.write_text("\n".join(chunk) + "\n")
        os.utime(tmp, (first_mtime + n, first_mtime + n))  # oldest first = arrival order
        tmp.rename(final)
        progress.advance(task, len(chunk))
    return n


def generate(profile: Profile, out: Path, truth_path: Path | None = None,
             campaigns: list[Campaign] | None = None, quiet: bool = False) -> Truth:
    """Generate a clickstream into ``out`` (rotated ``events-*.jsonl``) and its ground truth
    into ``truth_path`` (default: ``<out>.truth.json`` beside the folder)."""
    campaigns = campaigns or default_campaigns()
    truth = Truth(seed=profile.seed, campaigns=[asdict(c) for c in campaigns])
    truth.weak_campaigns = {
        "click_to_cart": [c.campaign_id for c in campaigns if c.click_to_cart < 0.2],
        "click_through": [c.campaign_id for c in campaigns if c.ctr < 0.02],
    }
    w = _World(profile, campaigns)
    columns = [TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, disable=quiet) as progress:
        lines = _deliver(w, _events(w, truth, progress), truth)
        truth.lines = len(lines)
        truth.files = _write(lines, out, profile.lines_per_file, progress)
    truth_path = truth_path or out.with_name(out.name + ".truth.json")
    truth_path.write_text(truth.to_json())
    return truth


def load_truth(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
