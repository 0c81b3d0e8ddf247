"""Stages after the connect: TLS, send/expect and starttls, each timed and optional.

- `spec`: what to run (`StageSpec`, `TlsOptions`, `Step`): plain data, no asyncio or ssl;
- `runner`: runs a spec on a connected socket under the attempt's deadline;
- `tls`: contexts, the handshake, what the certificates say, the failure names;
- `expect`: bounded reads matched line by line; `starttls`: protocols' upgrade dialogues;
- `result`: what they found (`StageResult`, the record's added keys) and the error names.
"""
