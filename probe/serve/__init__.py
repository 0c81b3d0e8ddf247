"""`probe serve`: the responder that tells each client the endpoint it saw (`server`), and
its one-line answer (`answer`), which the reflect stage (`probe.stages.reflect`) reads."""
