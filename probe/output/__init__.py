"""Where records go. `writer`: the buffered byte sink; `jsonl` and `human`: renderers (a new
output format is a new renderer module, registered in `log`); `log`: structlog, configured
once with the chosen renderer."""
