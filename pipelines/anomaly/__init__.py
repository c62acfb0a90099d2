"""Anomaly detection: session features (pure), an IsolationForest trained and registered in
MLflow, and the champion scoring closed sessions in the gold stream (docs/anomaly.md)."""
