"""Anomaly detection: session features (pure), an IsolationForest trained and registered in
MLflow, and the champion scoring closed sessions in the gold stream (docs/anomaly.md)."""

import os

# No usage telemetry from MLflow: a lake's models stay on the machine, and an offline
# machine does not wait on a telemetry endpoint. Set it to "false" to allow it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
