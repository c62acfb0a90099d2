"""The event contract: the six funnel steps, the input schema and the validation rules.

Everything that knows what a valid event is lives here, so the generator, the silver
transform and the tests agree by construction.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from pipelines.steps import AD_STEPS, COMMERCE_STEPS, STEP_INDEX, STEPS  # noqa: F401 - the contract's steps

REQUIRED_FIELDS = ("event_id", "event_type", "event_time", "user_id", "tracking_id")
FIELDS = (
    *REQUIRED_FIELDS,
    "campaign_id",
    "ad_id",
    "product_id",
    "price",
    "quantity",
    "ip",
    "user_agent",
)
CORRUPT = "_corrupt_record"

# Parse every field as a string first: a wrongly typed value then becomes a precise
# quarantine reason (invalid_price, ...) instead of a whole-record parse failure.
RAW_EVENT_SCHEMA = StructType(
    [StructField(name, StringType()) for name in FIELDS] + [StructField(CORRUPT, StringType())]
)

# Quarantine reasons, in the order they are checked; a row gets the first that applies.
MALFORMED_JSON = "malformed_json"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
INVALID_EVENT_TIME = "invalid_event_time"
EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
INVALID_PRICE = "invalid_price"
NEGATIVE_PRICE = "negative_price"
INVALID_QUANTITY = "invalid_quantity"


def missing(field: str) -> str:
    """The quarantine reason for an absent or empty required field."""
    return f"missing_{field}"


_ZONED_ISO = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"


# The times an event may carry: from 2000 to 2199. Outside them a time is a broken clock or a
# typo, not an event, and out of what the gold stream's pandas can hold (1677-2262). Times
# ahead of the clock but inside the range are the quality suite's to judge
# (``event_time_not_future``, docs/quality.md).
EARLIEST_EVENT_TIME, END_OF_EVENT_TIME = "2000-01-01 00:00:00", "2200-01-01 00:00:00"


def parse_event_time(raw: Column) -> Column:
    """ISO-8601 with a zone (``Z`` or ``+hh:mm``) -> UTC timestamp; anything else -> null."""
    return F.when(raw.rlike(_ZONED_ISO), F.try_to_timestamp(raw))


def step_index(event_type: Column) -> Column:
    """``event_type`` -> its 1-based funnel index; null for an unknown type."""
    mapping = F.create_map(*[x for s, i in STEP_INDEX.items() for x in (F.lit(s), F.lit(i))])
    return mapping[event_type]


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def typed_fields(p: Column) -> dict[str, Column]:
    """The values of a parsed struct ``p`` that the rules and the silver row share, each
    typed once: ``step``, ``event_time``, ``price`` and ``quantity``."""
    return {"step": step_index(p["event_type"]), "event_time": parse_event_time(p["event_time"]),
            "price": p["price"].try_cast("double"), "quantity": p["quantity"].try_cast("int")}


def rejection_reason(p: Column, typed: dict[str, Column] | None = None) -> Column:
    """The first contract rule a parsed struct ``p`` (of ``RAW_EVENT_SCHEMA``) breaks, or null.
    ``typed``: ``typed_fields(p)``, when the caller has them as columns already (computed once).

    Checked in order: JSON syntax, required fields, event type, time, its range, price,
    quantity and the product on commerce steps.
    """
    typed = typed or typed_fields(p)
    event_time, price, quantity = typed["event_time"], typed["price"], typed["quantity"]
    is_commerce = p["event_type"].isin(*COMMERCE_STEPS)
    checks: list[tuple[Column, str]] = [(p[CORRUPT].isNotNull() | p.isNull(), MALFORMED_JSON)]
    checks += [(_blank(p[f]), missing(f)) for f in REQUIRED_FIELDS]
    checks += [
        (typed["step"].isNull(), UNKNOWN_EVENT_TYPE),
        (event_time.isNull(), INVALID_EVENT_TIME),
        (~event_time.between(F.lit(EARLIEST_EVENT_TIME).cast("timestamp"),
                             F.lit(END_OF_EVENT_TIME).cast("timestamp")), EVENT_TIME_OUT_OF_RANGE),
        (p["price"].isNotNull() & (price.isNull() | F.isnan(price) | (F.abs(price) == float("inf"))),
         INVALID_PRICE),
        (price < 0, NEGATIVE_PRICE),
        (p["quantity"].isNotNull() & (quantity.isNull() | (quantity < 1)), INVALID_QUANTITY),
        (is_commerce & _blank(p["product_id"]), missing("product_id")),
    ]
    reason = F.lit(None).cast("string")
    for failed, name in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
    return reason
