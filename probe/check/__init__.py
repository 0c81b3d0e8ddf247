"""`probe check`: the one-shot command. `command` validates the command line and runs it,
`run` turns endpoints into attempts and records, `inputs` reads blocking target sources,
`workers` forks one process per core for sweeps, `report` is the human summary."""
