"""The anomaly model: an IsolationForest over ``features.FEATURES``, its evaluation against
labels, and its life in the MLflow registry (``funnelhouse-anomaly``, alias ``champion``).

The tracking and registry URIs come from ``mlflow.tracking_uri`` in config; by default the
lake carries its own: ``sqlite:///<lake>/_mlflow/mlflow.db`` with artifacts under
``<lake>/_mlflow/artifacts``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.anomaly.features import FEATURES

if TYPE_CHECKING:  # scikit-learn loads when a model is fitted or loaded: a run without one
    from sklearn.ensemble import IsolationForest  # starts about 1.5 s sooner

log = logging.getLogger(__name__)
ALIAS = "champion"


def fit(features: pd.DataFrame, n_estimators: int, contamination: float, seed: int,
        names: list[str] | None = None) -> IsolationForest:
    """Fit on the ``names`` columns of ``features`` (default: all of ``FEATURES``); the model
    keeps their names (``feature_names_in_``), so it scores with the columns it learned.

    The rows are put in one canonical order first (sorted by every column): each tree draws
    its subsample by row position, so without it the same sessions read back in another
    order (a stream's files against a backfill's) would train another forest."""
    unknown = sorted(set(names or []) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown anomaly features {unknown}; choose from {FEATURES}")
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=n_estimators, contamination=contamination, random_state=seed)
    X = features[names or FEATURES].astype(float)
    return model.fit(X.sort_values(list(X.columns), kind="stable", ignore_index=True))


def scores(model: IsolationForest, features: pd.DataFrame) -> np.ndarray:
    """Higher means more anomalous (the negated ``score_samples``), over the features the
    model was trained on (a version trained before a feature was added still scores)."""
    if features.empty:
        return np.zeros(0)
    return -model.score_samples(features[list(model.feature_names_in_)].astype(float))


def threshold(model: IsolationForest) -> float:
    """The score above which a session is an anomaly: the training contamination's cut."""
    return float(-model.offset_)


@dataclass
class Evaluation:
    roc_auc: float
    precision_at_k: float  # k = the number of anomalous sessions
    recall_at_fpr: float
    fpr: float
    positives: int
    sessions: int

    def as_metrics(self) -> dict[str, float]:
        return {"roc_auc": self.roc_auc, "precision_at_k": self.precision_at_k,
                f"recall_at_fpr_{self.fpr:g}": self.recall_at_fpr,
                "positives": self.positives}


def evaluate(score: np.ndarray, labels: np.ndarray, fpr: float) -> Evaluation:
    """Against 0/1 labels: ROC-AUC, precision among the top-k scores (k = positives), and the
    recall reached while at most ``fpr`` of the normal sessions are flagged."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels, dtype=int)
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError("evaluation needs both anomalous and normal sessions")
    k = positives
    top = np.argsort(-score, kind="stable")[:k]
    false_pos, true_pos, _ = roc_curve(labels, score)
    return Evaluation(roc_auc=float(roc_auc_score(labels, score)),
                      precision_at_k=float(labels[top].mean()),
                      recall_at_fpr=float(true_pos[false_pos <= fpr].max()),
                      fpr=fpr, positives=positives, sessions=len(labels))


def tracking_uri(lake: str, configured: str | None) -> str:
    return configured or f"sqlite:///{Path(lake).resolve()}/_mlflow/mlflow.db"


def use_lake(lake: str, configured: str | None, experiment: str = "funnelhouse-anomaly") -> None:
    """Point MLflow's tracking and registry at the lake's store; the experiment's artifacts
    live under ``<lake>/_mlflow/artifacts``."""
    import mlflow

    uri = tracking_uri(lake, configured)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(Path(lake).resolve() / "_mlflow" /
                                                                "artifacts").as_uri())
    mlflow.set_experiment(experiment)


class Champion:
    """The registered model's ``champion``, loaded once per version and cached. ``current()``
    asks the registry at most every ``ttl`` seconds which version holds the alias, so a moved
    alias reaches a running stream without a restart."""

    def __init__(self, name: str, lake: str, configured_uri: str | None, ttl: float = 10.0):
        self.name, self.ttl = name, ttl
        self.uri = tracking_uri(lake, configured_uri)
        self._checked = -float("inf")
        self._version: int | None = None
        self._model = None
        self._threshold = 0.0
        self._warned = False
        self._refused: set[int] = set()

    def current(self) -> tuple[int, IsolationForest, float] | None:
        """(version, model, threshold), or None while no version holds the alias."""
        now = time.monotonic()
        if now - self._checked >= self.ttl:
            self._checked = now
            self._refresh()
        if self._version is None:
            return None
        return self._version, self._model, self._threshold

    def _refresh(self) -> None:
        if not has_store(self.uri):
            return self._none_yet()  # no store yet: do not create one (and load MLflow) for nothing
        version = holder(self.name, self.uri)
        if version is None:
            return self._none_yet()
        if version != self._version and version not in self._refused:
            _, model, cut = load(self.name, self.uri, version)
            unknown = missing_features(model)
            if unknown:  # trained by an older release on features this one no longer computes
                self._refused.add(version)
                log.error("%s version %d needs features this release does not compute (%s): sessions "
                          "are not scored until a version trained now holds %r (`funnelhouse train`)",
                          self.name, version, ", ".join(unknown), ALIAS)
                self._version = None
                return
            self._version, self._model, self._threshold = version, model, cut
            log.info("scoring with %s version %d", self.name, self._version)

    def _none_yet(self) -> None:
        if not self._warned:
            log.warning("no %s model holds the alias %r yet: sessions are not scored "
                        "(run `funnelhouse train`)", self.name, ALIAS)
            self._warned = True


def missing_features(model: IsolationForest) -> list[str]:
    """The features ``model`` was trained on that ``session_features`` no longer computes."""
    return sorted(set(model.feature_names_in_) - set(FEATURES))


def has_store(uri: str) -> bool:
    """False for a sqlite store whose file does not exist yet: nothing was ever registered
    there, and asking MLflow would create the database (3 s of migrations) for nothing."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def holder(name: str, uri: str, alias: str = ALIAS) -> int | None:
    """The version of ``name`` that holds ``alias`` in the registry at ``uri``, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return int(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load(name: str, uri: str, version: int) -> tuple[int, IsolationForest, float]:
    """(version, model, threshold) of a registered version; MlflowException if there is none."""
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    registered = client.get_model_version(name, str(version))
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    return version, model, float(client.get_run(registered.run_id).data.params["threshold"])


def score_rows(sessions: pd.DataFrame, model: IsolationForest, cut: float, version: int,
               now: pd.Timestamp) -> pd.DataFrame:
    """Closed ``gold/session_funnel`` rows -> ``gold/anomaly_scores`` rows."""
    from pipelines.anomaly.features import session_features

    features = session_features(sessions)
    score = scores(model, features)
    return pd.DataFrame({"session_id": features["session_id"], "tracking_id": features["tracking_id"],
                         "user_id": features["user_id"], "anomaly_score": score,
                         "is_anomaly": score >= cut, "model_version": np.int32(version),
                         "scored_at": now})
