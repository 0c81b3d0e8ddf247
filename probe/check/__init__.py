"""`probe check`, the one-shot command, one way through:

argv → `plan` (one frozen Plan, validated once; `habits` answers other tools' flags) →
`command.check` (after `settle`: what the machine allows) forks `workers` (or runs the one
share in this process: the same code, N = 1) → `run.run_share` runs a share on the core
`choice` picks: the native one (its targets streamed in by `native_feed`, human lines by
`native_lines`) or `engine_run.run_on_python` → `probe_endpoints` (`inputs` reads blocking
sources on a thread) → each record to its `sinks` (human, JSON, CSV, `-o FILE`) and to the
tally of its `result.ShareResult` → the shares' results merged into the run's → `report`
writes the summary and `command` picks the exit code. `progress` is the stderr line while a
sweep runs."""
