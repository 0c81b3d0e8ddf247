"""`probe run`: the daemon. Data flows one way: config → runner → engine → record → log,
state, history and metrics; HTTP reads what they hold.

- `app`: builds the parts and runs them: startup, signals, reload, drain and shutdown.
- `config`: the TOML file → a validated `Config` (a key → checker table per section).
- `runner`: schedule → resolve → engine → path health, history and metrics; flush ticks.
- `ondemand`: `GET /probe` end to end (timeout, lookup, probe_allow, one attempt, answer).
- `engines`: the schedule's engine and /probe's, sized from one config.
- `schedule`: when each target fires (pure); `state`: flap damping (pure);
  `paths`: which addresses of a name are probed, each its own series.
- `fleet`: sharding the targets over N daemons.
- `metrics` and `series`: the Prometheus page; `http`: /metrics, /healthz, /probe and the
  status routes, hardened against clients that hold connections.
- `history`, `status_order`, `status` and `static/`: the status page.
"""
