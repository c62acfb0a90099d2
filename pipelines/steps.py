"""The six funnel steps, in order. Plain Python (no Spark), so config, the reports and the
``sql`` command load without the JVM's client library."""

from __future__ import annotations

STEPS: tuple[str, ...] = (
    "ad_impression",
    "ad_click",
    "landing_page_view",
    "add_to_cart",
    "checkout_start",
    "purchase",
)
STEP_INDEX: dict[str, int] = {step: i + 1 for i, step in enumerate(STEPS)}
AD_STEPS = ("ad_impression", "ad_click")
COMMERCE_STEPS = ("add_to_cart", "checkout_start", "purchase")
