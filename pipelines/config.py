"""Typed settings, validated once at start-up.

Layers, later wins:
1. the defaults in these models (``conf/base.yaml`` mirrors them, and a test keeps the two equal);
2. ``conf/base.yaml``, then ``conf/local.yaml`` (git-ignored), from the config folder;
3. ``--config FILE``;
4. environment variables ``FUNNELHOUSE__SECTION__KEY=value`` (value parsed as YAML);
5. CLI flags (``--lake``, ``--input``, ``--source``, ...).

Unknown keys are rejected with a message that names them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.steps import STEPS

ENV_PREFIX = "FUNNELHOUSE__"
REPO_ROOT = Path(__file__).resolve().parents[1]

_UNITS = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}


def _parse_duration(value: Any) -> timedelta:
    """Accept ``"10 minutes"``, ``"30s"``, ``"1 hour"``, a number of seconds or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a duration: {value!r} (try '10 minutes', '30s', '1 hour')")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]


def _location(value: Any) -> str:
    """A local path made absolute (Delta and Spark's file source need that); a URI as it is."""
    text = str(value)
    return text.rstrip("/") if "://" in text else str(Path(text).resolve())


Location = Annotated[str, BeforeValidator(_location)]


def _off(value: Any) -> Any:
    """YAML reads a bare ``off`` as false."""
    return "off" if value is False else value


Step = Literal[STEPS]  # type: ignore[valid-type]


def spark_interval(d: timedelta) -> str:
    """A timedelta as a Spark interval string, e.g. ``'600 seconds'``."""
    seconds = d.total_seconds()
    return f"{int(seconds)} seconds" if seconds == int(seconds) else f"{int(seconds * 1000)} milliseconds"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SparkSettings(Strict):
    master: str = "local[2]"
    app_name: str = "funnelhouse"
    shuffle_partitions: int = Field(4, ge=1)
    ui: StrictBool = False
    driver_memory: str = "4g"
    jvm_options: str = ""  # appended to the driver JVM's options, e.g. "-XX:TieredStopAtLevel=1"
    conf: dict[str, str] = Field(default_factory=dict)


class StreamSettings(Strict):
    trigger_interval: Duration = timedelta(seconds=1)
    max_files_per_trigger: int | None = Field(None, ge=1)
    max_bytes_per_trigger: ByteSize | None = ByteSize(128 * 2**20)  # unused when max_files_per_trigger is set
    watermark_delay: Duration = timedelta(minutes=10)
    # landing files whose micro-batch has committed: left (off), moved (archive) or deleted
    # (Spark's ``cleanSource``); the file source lists the whole folder every micro-batch
    clean_source: Annotated[Literal["off", "archive", "delete"], BeforeValidator(_off)] = "off"
    source_archive_dir: Location | None = None  # where ``archive`` moves them; None: ``input`` + "-archive"


class KafkaSettings(Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "events"
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_offsets_per_trigger: int | None = Field(500_000, ge=1)
    fail_on_data_loss: StrictBool = True


class SessionSettings(Strict):
    gap: Duration = timedelta(minutes=30)
    attribution: Literal["first_touch", "last_touch"] = "first_touch"


class DropoffRule(Strict):
    """Alert when ``to_step / from_step`` conversion is below ``min_conversion``
    for a campaign window that has at least ``min_volume`` sessions at ``from_step``."""

    name: str
    from_step: Step
    to_step: Step
    min_conversion: float = Field(ge=0, le=1)
    min_volume: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> DropoffRule:
        if STEPS.index(self.to_step) <= STEPS.index(self.from_step):
            raise ValueError(f"rule {self.name}: to_step must come after from_step")
        return self


def _default_dropoff_rules() -> list[DropoffRule]:
    return [
        DropoffRule(name="click_to_cart", from_step="ad_click", to_step="add_to_cart",
                    min_conversion=0.20, min_volume=100),
        DropoffRule(name="click_through", from_step="ad_impression", to_step="ad_click",
                    min_conversion=0.02, min_volume=1000),
    ]


class FunnelSettings(Strict):
    window: Duration = timedelta(hours=1)
    dropoff_rules: list[DropoffRule] = Field(default_factory=_default_dropoff_rules)


class RetargetSettings(Strict):
    wait: Duration = timedelta(minutes=10)  # an ad_click with no purchase this long -> offer
    cooldown: Duration = timedelta(hours=24)  # no new offer to a user and campaign within this
    buckets: int = Field(16, ge=1)  # a batch build hashes users into this many groups


class GoldSettings(Strict):
    buckets: int = Field(16, ge=1)  # a batch build hashes journeys into this many groups


class ReminderSettings(Strict):
    min_adds: int = Field(3, ge=1)  # add_to_cart events in a session without a purchase


class FraudRule(Strict):
    """A velocity rule: flag an entity whose ``measure`` over ``event_types`` reaches
    ``threshold`` within any span of ``window`` (both ends included)."""

    name: str
    event_types: list[Step] = Field(min_length=1)
    key: Literal["user", "ip"]
    measure: Literal["count", "quantity"]
    threshold: int = Field(ge=1)
    window: Duration


def _default_fraud_rules() -> list[FraudRule]:
    return [
        FraudRule(name="R1", event_types=["add_to_cart"], key="user", measure="count",
                  threshold=10, window=timedelta(seconds=5)),
        FraudRule(name="R2", event_types=["purchase"], key="user", measure="quantity",
                  threshold=50, window=timedelta(seconds=10)),
        FraudRule(name="R3", event_types=["purchase"], key="ip", measure="count",
                  threshold=5, window=timedelta(seconds=10)),
    ]


class FraudSettings(Strict):
    buckets: int = Field(16, ge=1)  # a batch build hashes entities into this many groups
    max_evidence: int = Field(200, ge=1)  # event ids kept per flag
    rules: list[FraudRule] = Field(default_factory=_default_fraud_rules)


Policy = Literal["warn", "drop", "fail"]


class QualitySettings(Strict):
    """Great Expectations checks at the silver and gold boundaries (``pipelines/quality.py``)."""

    enabled: StrictBool = True
    future_tolerance: Duration = timedelta(minutes=5)  # event_time may lead the clock by this
    max_price: float = Field(100_000.0, gt=0)
    max_quantity: int = Field(1_000, ge=1)
    policies: dict[str, Policy] = {}  # expectation name -> policy, over the defaults


class MaintenanceSettings(Strict):
    """``funnelhouse maintain``: compaction and VACUUM (``pipelines/jobs/maintain.py``)."""

    vacuum_retention: Duration = timedelta(days=7)  # files removed longer ago than this are deleted
    bronze_retention: Duration | None = timedelta(days=30)  # raw lines (raw IPs) kept; None: forever
    target_file_size: int = Field(128 * 1024 * 1024, ge=1024 * 1024)  # bytes per compacted file


NoticeKind = Literal["dropoff", "fraud", "offer", "reminder"]
Channel = Literal["slack", "email", "webhook"]


class NotifySettings(Strict):
    """Delivery of the gold tables' alerts, flags, offers and reminders
    (``pipelines/notify/``, docs/alerts.md). Secrets never live here: the environment only."""

    enabled: StrictBool = True
    routes: dict[NoticeKind, list[Channel]] = {
        "dropoff": ["slack"], "fraud": ["slack"], "offer": ["email"], "reminder": ["email"]}
    recipient: str = "{user_id}@example.com"  # email address template over the row's ids
    on_call_email: str = "oncall@example.com"  # drop-off alerts and fraud flags routed to email
    discount: float = Field(0.10, gt=0, lt=1)  # the retargeting offer
    limits: dict[Literal["offer", "reminder"], int] = {"offer": 1, "reminder": 1}  # per recipient per day
    max_attempts: int = Field(3, ge=1)  # then the notice is "failed" (``notify retry`` sends it again)
    backoff: Duration = timedelta(milliseconds=500)  # before the 2nd attempt; doubles after
    timeout: Duration = timedelta(seconds=10)  # per request to a channel


class MlflowSettings(Strict):
    """Where models are tracked and registered; None: the lake's own store,
    ``sqlite:///<lake>/_mlflow/mlflow.db`` with artifacts under ``<lake>/_mlflow/artifacts``."""

    tracking_uri: str | None = None


class AnomalySettings(Strict):
    """The IsolationForest over session features (``pipelines/anomaly/``, docs/anomaly.md)."""

    enabled: StrictBool = True  # the gold stream scores closed sessions with the champion
    model_name: str = "funnelhouse-anomaly"
    n_estimators: int = Field(100, ge=1)
    features: list[str] | None = None  # a subset of anomaly.features.FEATURES; None: all of them
    contamination: float = Field(0.01, gt=0, le=0.5)  # share of sessions flagged; sets the threshold
    seed: int = 42
    fpr: float = Field(0.01, gt=0, lt=1)  # recall is reported at this false-positive rate
    refresh: Duration = timedelta(seconds=10)  # how often the stream asks which version is champion


class GeoSettings(Strict):
    """IP -> location while silver is built (``pipelines/geo.py``, docs/tables.md)."""

    ip_locations: str = "data/geo/ip_locations.csv"  # network,country,region; relative: to the repository

    @field_validator("ip_locations", mode="after")
    @classmethod
    def _from_repo(cls, value: str) -> str:
        return value if "://" in value or Path(value).is_absolute() else str(REPO_ROOT / value)


class MetricsSettings(Strict):
    """Prometheus metrics of ``funnelhouse run`` (``pipelines/metrics.py``, docs/observability.md)."""

    enabled: StrictBool = True
    host: str = "127.0.0.1"  # where /metrics listens; 0.0.0.0 exposes it beyond this machine
    port: int = Field(9108, ge=1, le=65535)
    pushgateway: str | None = None  # host:port; an --available-now run pushes its final values there


class Settings(Strict):
    lake: Location = "data/lake"  # a local folder or a URI (s3a://, abfss://)
    input: Location = "data/landing"
    source: Literal["files", "kafka"] = "files"
    spark: SparkSettings = SparkSettings()
    stream: StreamSettings = StreamSettings()
    kafka: KafkaSettings = KafkaSettings()
    geo: GeoSettings = GeoSettings()
    sessions: SessionSettings = SessionSettings()
    funnel: FunnelSettings = FunnelSettings()
    gold: GoldSettings = GoldSettings()
    fraud: FraudSettings = FraudSettings()
    reminders: ReminderSettings = ReminderSettings()
    retarget: RetargetSettings = RetargetSettings()
    quality: QualitySettings = QualitySettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    notify: NotifySettings = NotifySettings()
    metrics: MetricsSettings = MetricsSettings()
    mlflow: MlflowSettings = MlflowSettings()
    anomaly: AnomalySettings = AnomalySettings()

    @property
    def source_archive(self) -> str:
        """Where ``stream.clean_source: archive`` moves the landing files (Spark keeps each
        file's own path below it: ``<archive>/<input>/part-0.jsonl``)."""
        return self.stream.source_archive_dir or f"{self.input}-archive"

    def table(self, name: str) -> str:
        """The path of a lake table, e.g. ``table('silver/events')``."""
        return f"{self.lake}/{name}"

    def checkpoint(self, name: str) -> str:
        return f"{self.lake}/_checkpoints/{name}"


class ConfigError(ValueError):
    """Raised for a config that does not validate; the message names every bad key."""


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX):].lower().split("__")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw)
    return out


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}: {what}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    conf_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    local: bool = True,
) -> Settings:
    """Build the settings from the layers described in the module docstring. ``environ``
    replaces the process environment; ``local=False`` skips ``conf/local.yaml`` (tests use
    both, so a developer's own settings cannot leak into them)."""
    conf_dir = conf_dir or Path(os.environ.get("FUNNELHOUSE_CONF_DIR", REPO_ROOT / "conf"))
    data: dict[str, Any] = {}
    for path in (conf_dir / "base.yaml", conf_dir / "local.yaml")[:2 if local else 1]:
        if path.exists():
            data = _deep_merge(data, _read_yaml(path))
    if config_file is not None:
        if not config_file.exists():
            raise ConfigError(f"config file not found: {config_file}")
        data = _deep_merge(data, _read_yaml(config_file))
    data = _deep_merge(data, _env_overrides(os.environ if environ is None else environ))
    data = _deep_merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
