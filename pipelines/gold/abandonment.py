"""Product abandonment: how often a product put in a cart is not bought in that session."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform


def product_abandonment() -> Transform:
    """Sessions -> ``gold/product_abandonment``, one row per product.

    ``adds`` = sessions that added the product to a cart; ``purchases`` = those of them
    that also bought it; ``abandonment_rate`` = 1 - purchases / adds. Purchases without an
    add in the same session (e.g. a buy-now button) are counted apart as ``direct_purchases``.
    """
    def _(sessions: DataFrame) -> DataFrame:
        added = sessions.select("session_id", F.explode("added_products").alias("product_id"))
        bought = sessions.select("session_id", F.explode("purchased_products").alias("product_id"),
                                 F.lit(True).alias("bought"))
        pairs = added.withColumn("added", F.lit(True)).join(bought, ["session_id", "product_id"], "full")
        return (pairs.groupBy("product_id").agg(
                    F.count_if(F.col("added")).cast("long").alias("adds"),
                    F.count_if(F.col("added") & F.col("bought")).cast("long").alias("purchases"),
                    F.count_if(F.col("added").isNull()).cast("long").alias("direct_purchases"))
                .withColumn("abandonment_rate",
                            F.when(F.col("adds") > 0, 1 - F.col("purchases") / F.col("adds"))))
    return _
