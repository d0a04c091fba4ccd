"""Mean ± sample std over trials: the one aggregation behind the tables and the transfer summaries."""
from __future__ import annotations

import pandas as pd


def aggregate(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one trial) and n of ``value`` per group of ``keys``.

    Published rows are already means: they keep their stated ``std`` and ``n`` (NaN when unstated).
    """
    measured = long[~long["published"].astype(bool)]
    stats = (measured.groupby(keys, dropna=False, sort=False)["value"]
             .agg(mean="mean", std="std", n="count").reset_index())
    stats["published"] = False
    published = long[long["published"].astype(bool)]
    if not published.empty:
        published = published.rename(columns={"value": "mean"})
        published = published.drop_duplicates(subset=keys, keep="last")[keys + ["mean", "std", "n"]]
        published = published.assign(published=True)
        stats = pd.concat([published, stats], ignore_index=True) if not stats.empty else published
    return stats
