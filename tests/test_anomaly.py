"""The anomaly model: features of hand-built sessions, its evaluation on hand-built scores,
and on the sample: train -> register -> champion -> the stream scores closed sessions with
the champion's version, and a moved alias changes the version of the rows scored after it."""

import json
import os
import signal
import subprocess
import urllib.request
from datetime import date

import nbformat
import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from helpers import SAMPLE, copy_sample, free_port, read, wait_http
from nbclient import NotebookClient
from pyspark.sql import functions as F

from pipelines.anomaly.features import FEATURES, LOG_SCALED, session_features, with_history
from pipelines.anomaly.model import evaluate, fit, scores, threshold
from pipelines.backfill import backfill_scores
from pipelines.config import REPO_ROOT
from pipelines.gold.profiles import ip_deltas, profile_deltas
from pipelines.jobs.run import run_available_now
from pipelines.jobs.train import EmptyRange, review, run_train

TRUTH = SAMPLE / "ground_truth.json"


def _session(**over) -> dict:
    base = {"session_id": "s1", "tracking_id": "t1", "user_id": "u1",
            "session_start": pd.Timestamp("2026-11-02 10:00:00"),
            "session_end": pd.Timestamp("2026-11-02 10:02:00"),
            "event_count": 6, "clicks": 1, "adds": 2, "purchases": 1, "items": 3, "revenue": 30.0,
            "funnel_level": 6, "added_products": ["p1", "p2"], "purchased_products": ["p2", "p3"],
            "countries": ["US"], "ip_hashes": ["h1"],
            "seconds_to_add_to_cart": 40.0, "seconds_to_purchase": 110.0}
    return base | over


def test_features_of_hand_built_sessions():
    bot = _session(session_id="s2", session_start=pd.Timestamp("2026-11-02 10:00:00"),
                   session_end=pd.Timestamp("2026-11-02 10:00:00.5"), event_count=12, clicks=0, adds=12,
                   purchases=0, items=0, revenue=0.0, funnel_level=4, added_products=["p9"],
                   purchased_products=None, seconds_to_add_to_cart=0.0, seconds_to_purchase=None,
                   countries=["US", "JP", "BR"], user_id="u2")
    got = session_features(with_history(pd.DataFrame([_session(), bot]))).set_index("session_id")
    assert list(got.columns) == ["tracking_id", "user_id", *FEATURES]
    # The heavy-tailed features are log1p-scaled: undo it to compare with hand-computed values.
    human, burst = (got.loc[s].copy() for s in ("s1", "s2"))
    for row in (human, burst):
        for name in LOG_SCALED:
            row[name] = np.expm1(row[name])
    expected_human = {"event_count": 6, "adds": 2, "purchases": 1, "funnel_level": 6,
                      "distinct_products": 3,       # p1, p2, p3
                      "countries": 1, "duration_seconds": 120, "events_per_minute": 3,
                      "seconds_between_events": 24,  # 120 s over 5 gaps
                      "mean_item_price": 10,         # 30.0 over 3 items
                      "items_per_purchase": 3, "cart_to_purchase": 0.5,
                      "returning": 0, "ip_users": 2}  # u1 and u2 (whose session ended first) on h1
    expected_burst = {"event_count": 12, "adds": 12, "purchases": 0, "funnel_level": 4,
                      "distinct_products": 1, "countries": 3, "duration_seconds": 0.5,
                      "events_per_minute": 720,      # half a second counts as the 1 s floor
                      "seconds_between_events": 0.5 / 11, "mean_item_price": 0,
                      "items_per_purchase": 0, "cart_to_purchase": 0,
                      "returning": 0, "ip_users": 1}  # only itself on h1 by its end
    assert human[FEATURES].to_dict() == pytest.approx(expected_human)
    assert burst[FEATURES].to_dict() == pytest.approx(expected_burst)


def _m(minute: int) -> pd.Timestamp:
    return pd.Timestamp("2026-11-02 10:00") + pd.Timedelta(minutes=minute)


HISTORY = pd.DataFrame([  # session, user, start, end, addresses -> returning, ip_users
    ("A", "u1", _m(0), _m(5), ["h1"], 0, 1),
    ("B", "u2", _m(2), _m(6), ["h1"], 0, 2),          # u1 and itself on h1 by minute 6
    ("E", "u2", _m(5), _m(7), [], 0, 0),              # B ended at 6, after E began: not returning
    ("C", "u1", _m(10), _m(12), ["h2"], 1, 1),        # A ended before C began
    ("D", "u3", _m(3), _m(20), ["h1", "h2"], 0, 3),   # h1: u1, u2, u3 (h2 has 2)
], columns=["session_id", "user_id", "session_start", "session_end", "ip_hashes", "returning", "ip_users"])


def test_history_in_one_batch_and_across_two_equals_the_hand_written_values():
    sessions = HISTORY.drop(columns=["returning", "ip_users"]).assign(
        purchases=0, revenue=0.0, countries=[[]] * len(HISTORY))
    expected = HISTORY.set_index("session_id")[["returning", "ip_users"]].astype(float)
    whole = with_history(sessions).set_index("session_id")[["returning", "ip_users"]]
    pd.testing.assert_frame_equal(whole, expected)
    # The stream: A, B and E close first; C and D later, against the profiles stored by then.
    first, later = sessions.iloc[:3], sessions.iloc[3:]
    users, ips = profile_deltas(first, None).to_pandas(), ip_deltas(first).to_pandas()
    streamed = pd.concat([with_history(first), with_history(later, users, ips)]).set_index("session_id")
    pd.testing.assert_frame_equal(streamed[["returning", "ip_users"]], expected)


def test_evaluation_on_hand_built_scores():
    labels = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.05])
    e = evaluate(score, labels, fpr=0.125)
    assert e.positives == 2
    assert e.precision_at_k == 0.5  # top 2: one anomaly, one normal
    assert e.recall_at_fpr == 1.0  # flagging 0.9, 0.8, 0.7 costs 1 of 8 normals
    assert evaluate(score, labels, fpr=0.1).recall_at_fpr == 0.5  # no normal may be flagged
    assert e.roc_auc == pytest.approx(15 / 16)  # 15 of the 16 (anomaly, normal) pairs ordered right


def test_training_on_an_empty_range_exits_with_a_clear_message(sample_lake):
    from datetime import date

    with pytest.raises(EmptyRange, match="no closed sessions"):
        run_train(sample_lake, date(2030, 1, 1), date(2030, 1, 2))


@pytest.mark.slow  # streams a lake of its own and trains three times
def test_train_register_promote_and_the_stream_scores_with_the_champion(spark, lake_settings, monkeypatch):
    s = lake_settings
    copy_sample(s.input, slice(0, 6))
    run_available_now(spark, s)
    assert read(spark, s, "gold/anomaly_scores").count() == 0  # no champion yet: not scored

    # A version that sees only how many countries a session came from misses nearly every bot.
    weak = s.model_copy(update={"anomaly": s.anomaly.model_copy(update={"features": ["countries"]})})
    first = run_train(weak, truth_path=TRUTH)
    assert (first.version, first.champion, first.reason) == (1, 1, "first version")

    copy_sample(s.input, slice(6, 7))
    run_available_now(spark, s)
    scored = read(spark, s, "gold/anomaly_scores")
    assert scored.count() > 0
    assert {r[0] for r in scored.select("model_version").distinct().collect()} == {1}
    closed = read(spark, s, "gold/session_funnel").where("NOT is_open")
    assert scored.join(closed, "session_id", "left_anti").count() == 0  # closed sessions only

    better = run_train(s, truth_path=TRUTH)  # every feature: a better ROC-AUC on the same sessions
    assert (better.version, better.champion) == (2, 2), better.reason
    same = run_train(s, truth_path=TRUTH)  # the same model again: no improvement, no move
    assert (same.version, same.champion) == (3, 2), same.reason
    assert "does not beat" in same.reason
    # What an ML engineer reviews: injected bursts ranked on top at a 1% false-positive rate.
    assert better.metrics["roc_auc"] > first.metrics["roc_auc"]
    assert better.metrics["recall_at_fpr_0.01"] >= 0.5 and better.metrics["roc_auc"] >= 0.98
    # Card testers and speed runners score far above the cut. The one or two impossible
    # travellers of this small lake sit near it (caught in a serial run, missed once under
    # pytest-xdist), so they are not asserted here; the demo lake's figures are in docs/anomaly.md.
    assert [better.metrics[f"caught_{k}"] for k in ("card_tester", "speed_runner")] == [1.0, 1.0]

    copy_sample(s.input, slice(7, None))
    run_available_now(spark, s)
    scored = read(spark, s, "gold/anomaly_scores")
    versions = {r[0]: r[1] for r in scored.groupBy("model_version").count().collect()}
    assert set(versions) == {1, 2}, versions  # the rows scored after the move carry version 2
    assert scored.groupBy("session_id").count().where("count > 1").count() == 0  # each once
    assert scored.where(F.col("is_anomaly")).count() > 0

    shown = {v["version"]: v["aliases"] for v in review(s)}
    assert shown == {3: [], 2: ["champion"], 1: []}

    # A backfill scores the range's closed sessions with the version asked for: each closed
    # session once per version, the stream's version-1 rows left as they were; again: nothing.
    day = date(2026, 11, 2)
    stream_v1 = {r.session_id: r.anomaly_score for r in scored.where("model_version = 1").collect()}
    closed = read(spark, s, "gold/session_funnel").where("NOT is_open AND session_date = '2026-11-02'")
    n_closed = closed.count()
    first_run = backfill_scores(spark, s, day, day, version=1)
    assert (first_run.read, first_run.added, first_run.removed) == (n_closed, n_closed - len(stream_v1), 0)
    v1 = read(spark, s, "gold/anomaly_scores").where("model_version = 1")
    assert_df_equality(v1.select("session_id"), closed.select("session_id"), ignore_row_order=True)
    assert {r.session_id: r.anomaly_score for r in v1.collect() if r.session_id in stream_v1} == stream_v1
    assert backfill_scores(spark, s, day, day, version=1).changed == 0
    assert backfill_scores(spark, s, day, day).added == closed.count() - versions[2]  # the champion: v2

    monkeypatch.setenv("FUNNELHOUSE_LAKE", s.lake)
    _review_notebook(spark, s)
    _mlflow_ui(s)


def _review_notebook(spark, s):
    """notebooks/model_review.ipynb runs on this lake: the champion, the runs, the score plot,
    and the champion's top-scored session first among the top anomalies."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / "model_review.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = " ".join(str(o.get("data", {}).get("text/plain", o.get("text", ""))) for o in outputs)
    assert "champion: version 2" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    top = (read(spark, s, "gold/anomaly_scores").where("model_version = 2")
           .orderBy(F.desc("anomaly_score"), "session_id").first())  # a tie: the notebook's order
    table = outputs[-1]["data"]["text/html"]
    body = table[table.index("<tbody>"):]
    assert top.session_id in body[:body.index("</tr>")]  # the first row


def _mlflow_ui(s):
    """``make mlflow-ui`` serves the lake's registry: the champion alias on version 2."""
    port = free_port()
    ui = subprocess.Popen(["make", "-s", "mlflow-ui", f"LAKE={s.lake}", f"MLFLOW_PORT={port}"], cwd=REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name=funnelhouse-anomaly"
        wait_http(url, timeout=90)
        with urllib.request.urlopen(url) as reply:
            model = json.load(reply)["registered_model"]
        assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "2"}
    finally:
        os.killpg(ui.pid, signal.SIGKILL)  # make, the MLflow CLI and its uvicorn worker
        ui.wait(timeout=30)


def test_a_model_depends_on_its_training_rows_not_on_their_order():
    """The same sessions read back in another order (a stream's files against a backfill's)
    train the same forest: the trees' subsamples are drawn from the rows in a canonical order."""
    rng = np.random.default_rng(7)
    features = pd.DataFrame(rng.lognormal(size=(400, len(FEATURES))), columns=FEATURES)
    features.iloc[::50, 0] = features.iloc[0, 0]  # ties in the first column: order by every column
    shuffled = features.sample(frac=1.0, random_state=3).reset_index(drop=True)
    probe = pd.DataFrame(rng.lognormal(size=(50, len(FEATURES))), columns=FEATURES)
    one, other = fit(features, 50, 0.05, 42), fit(shuffled, 50, 0.05, 42)
    np.testing.assert_array_equal(scores(one, probe), scores(other, probe))
    assert threshold(one) == threshold(other)
    # the seed still matters: the check above is not true of any two forests
    assert not np.array_equal(scores(fit(features, 50, 0.05, 43), probe), scores(one, probe))
