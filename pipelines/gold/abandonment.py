"""Product abandonment: how often a product put in a cart is not bought in that session."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform
from pipelines.gold.funnel import ratio_sql

COUNTS = ["adds", "purchases", "direct_purchases"]  # additive


def abandonment_rate(count=lambda c: c) -> str:
    """1 - purchases / adds, as SQL over ``count(column)`` (null without adds)."""
    return f"1 - {ratio_sql(count('purchases'), count('adds'))}"


def product_counts() -> Transform:
    """Signed sessions -> per product: ``adds`` = sessions that added it to a cart;
    ``purchases`` = those of them that also bought it; ``direct_purchases`` = sessions that
    bought it without adding it (e.g. a buy-now button); each summed with the session's
    ``sign``. Grain: product_id."""
    def _(sessions: DataFrame) -> DataFrame:
        sign = F.col("sign") if "sign" in sessions.columns else F.lit(1)
        signed = sessions.select("session_id", sign.alias("sign"), "added_products", "purchased_products")
        added = signed.select("session_id", "sign", F.explode("added_products").alias("product_id"),
                              F.lit(True).alias("added"))
        bought = signed.select("session_id", "sign", F.explode("purchased_products").alias("product_id"),
                               F.lit(True).alias("bought"))
        pairs = added.join(bought, ["session_id", "sign", "product_id"], "full")
        return pairs.groupBy("product_id").agg(
            F.sum(F.when(F.col("added"), F.col("sign")).otherwise(0)).cast("long").alias("adds"),
            F.sum(F.when(F.col("added") & F.col("bought"), F.col("sign")).otherwise(0)).cast("long")
            .alias("purchases"),
            F.sum(F.when(F.col("added").isNull(), F.col("sign")).otherwise(0)).cast("long")
            .alias("direct_purchases"))
    return _


def product_abandonment() -> Transform:
    """Sessions -> ``gold/product_abandonment``, one row per product, with
    ``abandonment_rate`` = 1 - purchases / adds."""
    def _(sessions: DataFrame) -> DataFrame:
        counts = sessions.transform(product_counts())
        return counts.withColumn("abandonment_rate", F.expr(abandonment_rate()))
    return _
