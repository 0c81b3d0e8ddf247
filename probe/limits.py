"""The bounds every input path shares, in one place, so the CLI, the config and `/probe`
cannot drift apart (one largest timeout, one longest line, whichever way a value comes in)."""

from __future__ import annotations

from typing import Final

MAX_TIMEOUT: Final = 3600.0  # seconds: the longest one attempt may wait (CLI, config, /probe)
MIN_INTERVAL: Final = 0.001  # seconds between attempts to one target (config)
MAX_INTERVAL: Final = 86_400.0  # one day
MAX_LINE: Final = 65_536  # longest line of a target or exclusion file (characters)
MAX_CONFIG_BYTES: Final = 1 << 20  # a config file is read whole: 1 MiB is far more than enough
