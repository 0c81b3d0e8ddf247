"""probe: concurrent TCP connect probes that record the local endpoint of every attempt."""

__version__ = "0.1.0"
