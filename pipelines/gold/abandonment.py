"""Product abandonment: how often a product put in a cart is not bought in that session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.common import Transform, string_lists
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


def product_count_deltas(sessions: pd.DataFrame) -> pd.DataFrame:
    """``product_counts`` on the driver, for the stream's signed session rows of one
    micro-batch (the stream == batch tests pin the two together). Each session's product
    lists are distinct, so a product is added and bought at most once per session row: each
    (row, product) pair is tagged 1 if added, 2 if bought, 3 if both."""
    def pairs(column: str, tag: int) -> pa.Table:
        lists = string_lists(sessions[column])
        products = pc.list_flatten(lists)
        return pa.table({"row": pc.list_parent_indices(lists), "product_id": products,
                         "tag": pa.repeat(pa.scalar(tag, pa.int8()), len(products))})
    both = pa.concat_tables([pairs("added_products", 1), pairs("purchased_products", 2)])
    both = both.filter(pc.is_valid(both["product_id"])).group_by(["row", "product_id"]).aggregate(
        [("tag", "sum")])
    sign = sessions["sign"].to_numpy(np.int64)[both["row"].to_numpy()]
    tag = both["tag_sum"].to_numpy()
    counts = pd.DataFrame({"product_id": both["product_id"].to_numpy(zero_copy_only=False),
                           "adds": np.where(tag != 2, sign, 0), "purchases": np.where(tag == 3, sign, 0),
                           "direct_purchases": np.where(tag == 2, sign, 0)})
    return counts.groupby("product_id", as_index=False, sort=False).sum()
