"""`probe run`: the daemon. Data flows one way: config → runner → engine → record → log,
state, history, store and metrics; HTTP reads what they hold.

- `app`: builds the parts and runs them: startup, signals, reload, drain and shutdown.
- `config`: the TOML file → a validated `Config` (a key → checker table per section);
  `stage_config`: the stage keys' layers ([defaults] → [modules.NAME] → target);
  `target_lists`: targets kept outside the config (`targets_file`, `include`).
- `runner`: schedule → resolve → engine → path health, history and metrics; flush ticks.
- `ondemand`: `GET /probe` end to end (timeout, lookup, probe_allow, one attempt, answer).
- `engines`: the schedule's engine and /probe's, sized from one config; `shortage`:
  destinations without a free local port, counted and logged.
- `meshing`: `[serve]` and `[mesh]`: answering peers, probing them, /mesh.
- `schedule`: when each target fires (pure); `state`: flap damping (pure);
  `paths`: which addresses of a name are probed, each its own series.
- `fleet`: sharding the targets over N daemons.
- `metrics`, `series` and `tls_series`: the Prometheus page.
- `web`: what the one HTTP server serves, from which part; `http` and `connections`:
  serving it, hardened against clients that hold connections.
- `history` and `store`: each target's recent past, in memory and durable (SQLite).
- `status`, `status_order`, `target_page`, `badge`, `pagetext` and `static/`: the pages.
"""
