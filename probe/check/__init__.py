"""`probe check`, the one-shot command, one way through:

argv → `plan` (one frozen Plan, validated once; `habits` answers other tools' flags) →
`command` forks `workers` (or runs one share in this process: the same code, N = 1) →
`run.run_share` feeds the engine (`inputs` reads blocking sources on a thread) and sends
each record to its `sinks` (human, JSON, CSV, `-o FILE`) and to the tally of its
`result.ShareResult` → the parent merges the typed results → `report` writes the summary
and `command` picks the exit code. `progress` is the stderr line while a sweep runs."""
