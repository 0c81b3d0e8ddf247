"""Names vulture (the dead-code check in .ci/run) cannot see used. Each says who uses it.

Not imported by anything: vulture reads it as if the names below were used.
"""

# ruff: noqa: B018, F821
# mypy: ignore-errors

# asyncio calls these protocol methods on a connection's events.
_.connection_made  # daemon/connections.py, serve/server.py
_.data_received  # serve/server.py
_.eof_received  # daemon/connections.py, serve/server.py

# aiohttp sends this header from the attribute.
_.content_length  # daemon/http.py

# msgspec writes every field of a Struct into /api/targets, read by static/ and users.
_.window_s  # daemon/status.py Page
_.bucket_s
_.per_page

# Python calls a module's __getattr__ for names it does not hold (PEP 562): lazy imports.
__getattr__  # engine/__init__.py

# pytest and its plugins call these by name.
pytestmark
pytest_collection_modifyitems
pytest_xdist_make_scheduler
pytest_runtest_setup
pytest_runtest_logreport
pytest_sessionfinish
_._split_scope  # tests/conftest.py: xdist's LoadScopeScheduling hook
_.dont_write_bytecode  # tests/conftest.py: sys flag
_.handle_starttag  # tests/daemon/test_status.py: HTMLParser callbacks
_.handle_data
_.binary_location  # tests/daemon/test_status_browser.py: selenium reads it

# Landed ahead of their first reader (features in progress); drop a line once the name is
# used, or the name itself if it never is.
STAGE_ERRORS  # stages/result.py
_.router_in  # tests/serve/test_nat.py
_.leaf_not_after  # tests/helpers/stages.py

# argparse-manpage reads these attributes of its Manpage when it renders probe(1).
_.description  # manpage.py
