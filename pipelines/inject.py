"""What the generator injects on top of honest journeys, each recorded in the ground truth:
fraud bursts for the rules R1-R3, anomalies no rule can see, malformed lines and
contract-valid events that break a quality expectation; and the address plan that
``data/geo/ip_locations.csv`` maps to places.

``generate.py`` builds the journeys and delivers everything; the functions here take its
random state (``_World``) and its ``Truth``.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipelines import contract as C

if TYPE_CHECKING:
    from pipelines.generate import Truth, _World


# The address plan, as data/geo/ip_locations.csv maps it: region k of the file owns
# 10.(16k).0.0/12. A user lives in one region (more of them in the bigger markets) and always
# comes from the same address; bots and anomalies come from a hosting network, 172.16.0.0/12.
_HOME_REGIONS = [0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


def home_ip(u: int, region: int | None = None) -> str:
    """User ``u``'s address: in its home region (or ``region``), unique for u < 2**20."""
    if region is None:
        region = _HOME_REGIONS[(u * 2654435761 >> 8) % len(_HOME_REGIONS)]
    return f"10.{16 * region + (u >> 16 & 15)}.{u >> 8 & 255}.{u & 255}"


def bots(w: _World, truth: Truth) -> list[dict[str, Any]]:
    """Fraud bots, ``bots_per_rule`` of each kind. Each burst is recorded in the truth.

    R1: one user adds 12-30 items to cart, 60-200 ms apart (well within 5 s).
    R2: one user buys 3 lines of 17-25 items each, 0.5-1.2 s apart (51-75 items in < 10 s).
    R3: 6-8 users behind one IP buy one item each, 0.5-1.2 s apart (< 10 s).
    """
    rng, evs = w.rng, []
    for n in range(w.p.bots_per_rule):
        for rule in ("R1", "R2", "R3"):
            t = w.p.start + w.span * rng.uniform(0.05, 0.9)
            ip = f"172.16.{rng.randint(0, 255)}.{n + 1}"
            crowd = rng.randint(6, 8)
            count = {"R1": rng.randint(12, 30), "R2": 3, "R3": crowd}[rule]
            tid = w.new_id("t")
            burst = []
            for k in range(count):
                user = (f"bot_{rule.lower()}_{n}" + (f"_{k}" if rule == "R3" else ""), ip)
                item = {"product_id": rng.choice(w.products), "price": 19.99,
                        "quantity": rng.randint(17, 25) if rule == "R2" else 1}
                gap = rng.randint(60, 200) if rule == "R1" else rng.randint(500, 1200)
                t += timedelta(milliseconds=gap)
                etype = "add_to_cart" if rule == "R1" else "purchase"
                burst.append(w.event(etype, t, user, tid if rule != "R3" else w.new_id("t"), **item))
            evs += burst
            truth.fraud_bursts.append({
                "rule": rule, "entity_type": "ip" if rule == "R3" else "user",
                "entity_id": ip if rule == "R3" else burst[0]["user_id"],
                "first_event_time": burst[0]["event_time"],
                "last_event_time": burst[-1]["event_time"],
                "event_count": len(burst), "quantity": sum(e["quantity"] for e in burst),
                "event_ids": [e["event_id"] for e in burst],
            })
    return evs


def anomalies(w: _World, truth: Truth) -> list[dict[str, Any]]:
    """Behaviour no fraud rule flags, ``bots_per_rule`` sessions of each kind, each recorded
    in ``truth.anomalies``. Organic (no campaign), each from an address of its own, and drawn
    from a random stream of their own, so the rest of the clickstream is as without them.

    scraper: 40-80 product page views, 1-4 s apart, never an add to cart (no rule reads views).
    card_tester: 12-20 purchases of one item at 0.50-1.99, 20-45 s apart (R2 needs 50 items
      within 10 s; R3 needs 5 purchases from one address within 10 s).
    speed_runner: landing, 2-4 adds, checkout and purchase of each line, 30-80 ms apart: a
      whole funnel in well under 2 s (too few adds for R1, too few purchases for R3).
    impossible_travel: a session that starts at the user's home address (California), adds to
      cart again from Tokyo 1-3 minutes later, and checks out from Sao Paulo 1-3 minutes after
      that (no rule reads addresses).
    """
    rng, evs = random.Random(w.p.seed * 7919 + 1), []
    for n in range(w.p.bots_per_rule):
        for k, kind in enumerate(("scraper", "card_tester", "speed_runner", "impossible_travel")):
            t = w.p.start + w.span * rng.uniform(0.05, 0.85)
            user = (f"u9{k}{n:04d}", f"172.20.{k}.{n + 1}")
            ips = [user[1]]
            tid = w.new_id("t", rng)
            if kind == "scraper":
                steps = [("landing_page_view", rng.uniform(1000, 4000), {"page_url": f"/product/{p}"})
                         for p in rng.sample(w.products, rng.randint(40, 80))]
            elif kind == "card_tester":
                steps = [("purchase", rng.uniform(20_000, 45_000),
                          {"product_id": rng.choice(w.products), "price": round(rng.uniform(0.5, 1.99), 2),
                           "quantity": 1}) for _ in range(rng.randint(12, 20))]
            elif kind == "speed_runner":
                basket = [{"product_id": rng.choice(w.products), "quantity": rng.randint(1, 3),
                           "price": round(rng.uniform(10, 80), 2)} for _ in range(rng.randint(2, 4))]
                steps = [("landing_page_view", rng.uniform(30, 80), {})] + [
                    (etype, rng.uniform(30, 80), item)
                    for etype in ("add_to_cart", "checkout_start", "purchase") for item in basket]
            else:
                u = 700_000 + 100 * k + n  # a user of the home region 0 (California)
                user = (f"u9{k}{n:04d}", home_ip(u, 0))
                item = {"product_id": rng.choice(w.products), "quantity": 1,
                        "price": round(rng.uniform(20, 90), 2)}
                ips = [user[1], user[1], home_ip(u, 11), home_ip(u, 13), home_ip(u, 13)]
                steps = [("landing_page_view", rng.uniform(1000, 5000), {}),
                         ("add_to_cart", rng.uniform(5000, 30_000), item),
                         ("add_to_cart", rng.uniform(60_000, 180_000), item),
                         ("checkout_start", rng.uniform(60_000, 180_000), item),
                         ("purchase", rng.uniform(5000, 20_000), item)]
            session = []
            for i, (etype, gap_ms, extra) in enumerate(steps):
                t += timedelta(milliseconds=gap_ms)
                session.append(w.event(etype, t, (user[0], ips[min(i, len(ips) - 1)]), tid, rng, **extra))
            evs += session
            truth.anomalies.append({
                "kind": kind, "user_id": user[0], "tracking_id": tid,
                "first_event_time": session[0]["event_time"], "last_event_time": session[-1]["event_time"],
                "event_count": len(session), "event_ids": [e["event_id"] for e in session]})
    return evs


_MALFORMED_KINDS = {
    C.MALFORMED_JSON: 30,
    C.missing("event_id"): 8,
    C.missing("user_id"): 7,
    C.UNKNOWN_EVENT_TYPE: 15,
    C.INVALID_EVENT_TIME: 15,
    C.NEGATIVE_PRICE: 10,
    C.INVALID_QUANTITY: 5,
    C.missing("product_id"): 10,
}


def malformed(w: _World, ev: dict[str, Any]) -> tuple[str, str]:
    """A broken copy of ``ev`` (with a fresh event_id) and the reason silver must give it."""
    rng = w.rng
    reason = rng.choices(list(_MALFORMED_KINDS), weights=list(_MALFORMED_KINDS.values()))[0]
    bad = {**ev, "event_id": w.new_id("x")}
    commerce = {"event_type": "add_to_cart", "product_id": rng.choice(w.products),
                "price": 9.99, "quantity": 1}
    if reason == C.MALFORMED_JSON:
        line = json.dumps(bad, separators=(",", ":"))
        return line[: rng.randint(1, len(line) - 2)], reason
    if reason.startswith("missing_") and reason != C.missing("product_id"):
        bad.pop(reason.removeprefix("missing_"))
    elif reason == C.UNKNOWN_EVENT_TYPE:
        bad["event_type"] = rng.choice(["ad_hover", "page_scroll", "wishlist_add", "PURCHASE"])
    elif reason == C.INVALID_EVENT_TIME:
        bad["event_time"] = rng.choice([ev["event_time"][:-1], "25/11/2026 10:00:00", "yesterday"])
    elif reason == C.NEGATIVE_PRICE:
        bad.update(commerce, price=-round(rng.uniform(1, 50), 2))
    elif reason == C.INVALID_QUANTITY:
        bad.update(commerce, quantity=0)
    else:
        bad.update(commerce)
        bad.pop("product_id")
    return json.dumps(bad, separators=(",", ":")), reason


def violations(w: _World, evs: list[dict[str, Any]], n: int) -> dict[str, list[str]]:
    """``n`` events per kind that pass the contract but break a quality expectation (named as
    in ``pipelines/quality.py``): an absurd price, an absurd quantity, a time years ahead."""
    if n <= 0:
        return {}
    carts = [e for e in evs if e["event_type"] == "add_to_cart"]
    out: dict[str, list[str]] = {}
    for kind, change in (("price_in_range", {"price": 9_999_999.0}),
                         ("quantity_in_range", {"quantity": 50_000}),
                         ("event_time_not_future", {"event_time": "2099-01-01T00:00:00.000Z"})):
        out[kind] = []
        for i in range(n):
            ev = {**w.rng.choice(carts), **change, "event_id": f"qv-{kind}-{i}"}
            out[kind].append(json.dumps(ev, separators=(",", ":")))
    return out
