"""``make bench``: what the pipeline costs, beside a baseline measured in the same run.

The parts, each printed as a table and all written to ``bench/results/<time>.json``:

- ``throughput``: ``funnelhouse run --available-now`` (bronze, then silver with gold) on 1M
  generated events, beside plain Spark on the same files in the same JVM (``read.text`` + ``from_json``
  -> Parquet). Both are warmed the same way, by one untimed run over the same lines (the
  pipeline's after one on the sample); the pipeline's first run is reported too. The
  core-seconds each side used, by process and kind of thread, and the least wall time that
  CPU allows on this machine's cores.
- ``growth``: the same 20k-event increment (later event times, ids of its own) on a lake
  primed empty and on the lake the throughput run left (1M events; ``--big``: 10M), each as
  primed and after a one-event tick closed what it held open (history alone); each run's
  wall and its micro-batches' own time, and the increment as the micro-batch after the
  tick's in one run (a job already running).
- ``freshness``: the job runs continuously while a feeder writes ``--rate`` events/s for
  ``--seconds`` (landing files every 200 ms, or Kafka records), each with ``event_time`` =
  its arrival. The delay from arrival to the commit that made it visible, read from each
  table's Delta log. ``--alerts`` shrinks the window, gap and watermark delay so drop-off
  alerts fire within the run, and measures each alert's lag behind the watermark that closed
  its window.
- ``quality``: silver micro-batches of ~100k events with the quality suite on and off.
- ``scoring``: the silver query (silver and gold) over the throughput input, without an anomaly
  model and then with a champion trained on the sessions the first run closed: what scoring costs.
- ``restart``: a new process reads back the open sessions of a steady rate (``--restart-events``,
  written once as a running job stores them) and runs micro-batches on: the start's peak
  memory and what its first micro-batches cost.

Memory: the JVM's peak resident size (``VmHWM``) and the Python driver's, at the end.

One module per part (``throughput``, ``growth``, ``freshness``, ``costs``: quality, scoring
and memory, ``restart``), what they share in ``common``; ``python -m pipelines.bench`` runs them
(``__main__``).
"""
