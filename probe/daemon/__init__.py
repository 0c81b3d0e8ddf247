"""`probe run`: the daemon. `config` (the file → a validated config), `schedule` (when each
target fires), `metrics` (Prometheus), `http` (/metrics, /healthz, /probe), `app` (serve →
startup → run → shutdown, signals, reload)."""
