"""Campaign performance and the budget recommendation."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform

BUDGET_RULE = (
    "share ∝ clicks × smoothed conversion, where smoothed conversion = "
    "(purchases + {prior_clicks} × overall conversion) / (clicks + {prior_clicks})"
)


def campaign_performance(prior_clicks: int = 100) -> Transform:
    """Sessions -> ``gold/campaign_performance``, one row per campaign.

    ``purchases`` counts attributed sessions with a purchase (orders); ``revenue`` sums
    price × quantity of their purchase events; ``purchase_conversion`` = purchases / clicks.
    The budget today is taken as proportional to clicks (``current_budget_share``). The
    recommendation re-weights it by conversion, shrunk toward the overall conversion by
    ``prior_clicks`` pseudo-clicks so a small campaign is not over-trusted, then
    normalises: spend moves from low- to high-converting campaigns.
    Also: time-to-convert percentiles (seconds from impression) for cart and purchase.
    """
    def _(sessions: DataFrame) -> DataFrame:
        per = (sessions.where(F.col("campaign_id").isNotNull()).groupBy("campaign_id").agg(
            F.count("*").alias("sessions"),
            F.sum("clicks").cast("long").alias("clicks"),
            F.count_if(F.col("purchases") > 0).cast("long").alias("purchases"),
            F.sum("revenue").alias("revenue"),
            F.percentile_approx("seconds_to_add_to_cart", 0.5).alias("p50_seconds_to_add_to_cart"),
            F.percentile_approx("seconds_to_purchase", 0.5).alias("p50_seconds_to_purchase"),
            F.percentile_approx("seconds_to_purchase", 0.9).alias("p90_seconds_to_purchase"),
        ))
        totals = per.agg(F.sum("clicks").alias("_clicks"), F.sum("purchases").alias("_purchases"))
        per = per.crossJoin(F.broadcast(totals))
        overall = F.col("_purchases") / F.col("_clicks")
        smoothed = (F.col("purchases") + prior_clicks * overall) / (F.col("clicks") + prior_clicks)
        per = per.withColumn("smoothed_conversion", smoothed).withColumn(
            "_weight", F.col("clicks") * F.col("smoothed_conversion"))
        per = per.crossJoin(F.broadcast(per.agg(F.sum("_weight").alias("_weights"))))
        return (per
                .withColumn("purchase_conversion", F.try_divide("purchases", "clicks"))
                .withColumn("current_budget_share", F.col("clicks") / F.col("_clicks"))
                .withColumn("recommended_budget_share",
                            F.coalesce(F.col("_weight") / F.col("_weights"), F.col("current_budget_share")))
                .withColumn("budget_change",
                            F.col("recommended_budget_share") - F.col("current_budget_share"))
                .withColumn("budget_rule", F.lit(BUDGET_RULE.format(prior_clicks=prior_clicks)))
                .drop("_clicks", "_purchases", "_weight", "_weights"))
    return _
