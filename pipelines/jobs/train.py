"""``funnelhouse train``: fit the IsolationForest on the closed sessions of a date range, log
an MLflow run, register the model and decide who is ``champion``.

No Spark: delta-rs reads ``gold/session_funnel`` and DuckDB maps the ground truth's event ids
to sessions. The first registered version becomes champion; after that the alias moves only
when the new version beats the champion's ROC-AUC on the same labelled sessions, or with
``--promote``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines import tables as T
from pipelines.anomaly import model as M
from pipelines.anomaly.features import session_features
from pipelines.anomaly.sessions import EmptyRange, closed_sessions
from pipelines.config import Settings
from pipelines.lake_sql import connect

log = logging.getLogger(__name__)


@dataclass
class Trained:
    version: int
    run_id: str
    sessions: int
    metrics: dict[str, float]
    champion: int
    reason: str  # why the alias is where it is


def injected_kinds(s: Settings, truth: dict) -> dict[str, str]:
    """tracking_id -> what the generator injected in that journey: the rule of a fraud burst
    (R1-R3) or the kind of an anomaly (scraper, card_tester, speed_runner)."""
    kinds = pa.table({
        "event_id": [e for b in truth.get("fraud_bursts", []) for e in b["event_ids"]]
        + [e for a in truth.get("anomalies", []) for e in a["event_ids"]],
        "kind": [b["rule"] for b in truth.get("fraud_bursts", []) for _ in b["event_ids"]]
        + [a["kind"] for a in truth.get("anomalies", []) for _ in a["event_ids"]]})
    con = connect(s.lake, ["silver_events"])
    con.register("injected", kinds)
    found = con.sql("SELECT tracking_id, min(kind) FROM silver_events JOIN injected USING (event_id) "
                    "GROUP BY tracking_id")
    return dict(found.fetchall())


def caught_by_kind(score: np.ndarray, cut: float, tracking_ids: pd.Series,
                   kinds: dict[str, str]) -> dict[str, float]:
    """Per injected kind, the share of its sessions scored at or above ``cut``."""
    flagged = pd.DataFrame({"kind": tracking_ids.map(kinds), "flagged": score >= cut}).dropna()
    return {f"caught_{k}": float(v) for k, v in flagged.groupby("kind")["flagged"].mean().items()}


def run_train(s: Settings, start: date | None = None, end: date | None = None,
              truth_path: Path | None = None, promote: bool = False) -> Trained:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    a = s.anomaly
    sessions = closed_sessions(s.table(T.SESSION_FUNNEL.name), start, end)
    if sessions.empty:
        raise EmptyRange(f"no closed sessions in gold/session_funnel between {start or 'the start'} "
                         f"and {end or 'the end'}: nothing to train on")
    features = session_features(sessions)
    labels, kinds = None, {}
    if truth_path is not None:
        kinds = injected_kinds(s, json.loads(Path(truth_path).read_text()))
        labels = features["tracking_id"].isin(kinds).to_numpy(dtype=int)

    M.use_lake(s.lake, s.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    model = M.fit(features, a.n_estimators, a.contamination, a.seed, a.features)
    score = M.scores(model, features)
    with mlflow.start_run() as run:
        mlflow.log_params({"n_estimators": a.n_estimators, "contamination": a.contamination,
                           "seed": a.seed, "features": ",".join(model.feature_names_in_),
                           "sessions": len(features), "from": str(start or ""), "to": str(end or ""),
                           "threshold": M.threshold(model)})
        metrics = {"flagged_share": float((score >= M.threshold(model)).mean())}
        if labels is not None:
            metrics |= M.evaluate(score, labels, a.fpr).as_metrics()
            metrics |= caught_by_kind(score, M.threshold(model), features["tracking_id"], kinds)
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "score_distribution.png"
            score_plot(score, labels, M.threshold(model), plot)
            mlflow.log_artifact(str(plot))
        X = features[list(model.feature_names_in_)].astype(float)
        # skops, not pickle; the one type it cannot vouch for is the trees' node storage, which
        # this process has just built.
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=a.model_name,
                                        signature=infer_signature(X, score), input_example=X.head(5),
                                        skops_trusted_types=["sklearn.tree._tree.Tree"],
                                        pip_requirements=_requirements())
    version = int(info.registered_model_version)
    champion, reason = _promote(client, a.model_name, version, promote, features, labels, metrics)
    return Trained(version, run.info.run_id, len(features), metrics, champion, reason)


def _requirements() -> list[str]:
    """What loading the model needs, pinned to this environment: given, because MLflow's own
    inference imports the process's modules in a subprocess (12 s of a 20 s training run)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "skops", "numpy", "scipy", "pandas")]


def _promote(client, name: str, version: int, promote: bool, features: pd.DataFrame,
             labels: np.ndarray | None, metrics: dict) -> tuple[int, str]:
    """Move ``champion`` to ``version`` when it is the first, when asked, or when it beats the
    current champion's ROC-AUC on the same sessions."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, M.ALIAS)
    except MlflowException:
        current = None
    if current is None or promote:
        client.set_registered_model_alias(name, M.ALIAS, str(version))
        return version, "first version" if current is None else "--promote"
    if labels is None:
        return int(current.version), "kept: no ground truth to compare on (--truth), and no --promote"
    import mlflow.sklearn

    old = mlflow.sklearn.load_model(f"models:/{name}/{current.version}")
    if M.missing_features(old):  # trained by an older release: it cannot score these sessions
        client.set_registered_model_alias(name, M.ALIAS, str(version))
        return version, (f"champion v{current.version} needs features this release does not compute "
                         f"({', '.join(M.missing_features(old))})")
    old_auc = M.evaluate(M.scores(old, features), labels, 0.01).roc_auc
    if metrics["roc_auc"] > old_auc:
        client.set_registered_model_alias(name, M.ALIAS, str(version))
        return version, f"ROC-AUC {metrics['roc_auc']:.4f} > champion v{current.version}'s {old_auc:.4f}"
    return int(current.version), (f"kept v{current.version}: ROC-AUC {metrics['roc_auc']:.4f} does not "
                                  f"beat its {old_auc:.4f} on the same sessions")


def score_plot(score: np.ndarray, labels: np.ndarray | None, cut: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if labels is None:
        ax.hist(score, bins=60, color="#4c78a8")
    else:
        ax.hist(score[labels == 0], bins=60, color="#4c78a8", alpha=0.8, label="normal")
        ax.hist(score[labels == 1], bins=60, color="#e45756", alpha=0.9, label="injected anomalies")
        ax.legend()
    ax.axvline(cut, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("sessions")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def review(s: Settings) -> list[dict]:
    """Every registered version with its aliases, parameters and metrics, newest first."""
    import mlflow

    M.use_lake(s.lake, s.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(s.anomaly.model_name).aliases  # alias -> version
    except MlflowException:
        return []
    out = []
    for v in client.search_model_versions(f"name = '{s.anomaly.model_name}'"):
        run = client.get_run(v.run_id)
        held = [a for a, version in aliases.items() if str(version) == str(v.version)]
        out.append({"version": int(v.version), "aliases": held, "run_id": v.run_id,
                    "created": pd.Timestamp(v.creation_timestamp, unit="ms"),
                    "params": run.data.params, "metrics": run.data.metrics})
    return sorted(out, key=lambda r: -r["version"])
