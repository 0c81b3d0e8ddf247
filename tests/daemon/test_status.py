"""The status page's builder and renderers, fed real records (the browser test drives the
whole daemon; these pin the details: escaping, filters, grouping, pages, the cache)."""

from __future__ import annotations

import asyncio
import html.parser
import json
import random
from collections import deque
from pathlib import Path
from types import MappingProxyType

import msgspec
import pytest
from multidict import MultiDict

from probe.daemon import status
from probe.daemon.config import ResolvedTarget
from probe.daemon.history import History
from probe.daemon.status import PER_PAGE, Query, QueryError, StatusPage
from probe.record import OPEN, REFUSED, TIMEOUT, Outcome, Record

NOW = 1_800_000_030.0
EVIL = "<img src=x onerror=alert(1)>"


def target(name: str, port: int, **labels: str) -> ResolvedTarget:
    address = f"127.0.0.1:{port}"
    return ResolvedTarget(name, address, "127.0.0.1", port, 1.0, 0.5, MappingProxyType(labels))


def rec(t: ResolvedTarget, outcome: Outcome, at: float, error: str | None = None) -> Record:
    return Record(at, t.address, t.host, t.port, "127.0.0.1", "ipv4", "127.0.0.1", 45678,
                  outcome, error, 0.25, 0.125 if outcome == OPEN else None, 0, 0.0, 1)  # fmt: skip


def page_for(targets: list[ResolvedTarget], history: History) -> StatusPage:
    return StatusPage(lambda: targets, history, clock=lambda: NOW)


class Collect(html.parser.HTMLParser):
    """Every start tag of a document, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> Collect:
    c = Collect()
    c.feed(body.decode())
    return c


Three = tuple[list[ResolvedTarget], History]


@pytest.fixture
def three() -> Three:
    up = target("web", 8080, team="net")
    down = target(EVIL, 1, team="<b>x</b>")
    never = target("quiet", 2)
    history = History()
    history.observe(up.name, rec(up, OPEN, NOW - 20), True)
    history.observe(down.name, rec(down, OPEN, NOW - 20), True)
    history.observe(down.name, rec(down, REFUSED, NOW - 10, "ECONNREFUSED"), False)
    return [up, down, never], history


async def test_rows_down_first_with_state_error_endpoint(three: Three) -> None:
    targets, history = three
    page = await page_for(targets, history).build(Query())
    rows = page.groups[0].rows
    assert [r.state for r in rows] == ["down", "unknown", "up"]
    down, quiet, up = rows
    assert (down.name, down.outcome, down.error) == (EVIL, REFUSED, "ECONNREFUSED")
    assert down.local == "127.0.0.1:45678" and down.cells[3] == "10s"
    assert [(c.before, c.after, c.reason) for c in down.changes] == [
        ("up", "down", "ECONNREFUSED"),
        ("unknown", "up", None),
    ]
    assert down.uptime_pct == 50.0 and up.uptime_pct == 100.0 and quiet.uptime_pct is None
    assert up.rtt_ms == 0.125 and up.cells[7] == "0.12 ms"
    assert page.counts == {"down": 1, "unknown": 1, "up": 1}


async def test_names_and_labels_are_text_never_markup(three: Three) -> None:
    targets, history = three
    body = await page_for(targets, history).answer("html", Query())
    doc = parse(body)
    assert "img" not in [tag for tag, _ in doc.tags]
    assert "b" not in [tag for tag, _ in doc.tags]
    text = "".join(doc.text)
    assert EVIL in text and "team=<b>x</b>" in text
    # the only script is ours, by URL; nothing inline, nothing from elsewhere
    scripts = [a for tag, a in doc.tags if tag == "script"]
    assert scripts == [{"src": "/static/status.js", "defer": None}]
    assert not any(a.get("style") for _, a in doc.tags)
    for tag, attrs in doc.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("/", "?")), (tag, attrs)


async def test_label_filter_and_groups(three: Three) -> None:
    targets, history = three
    sp = page_for(targets, history)
    page = await sp.build(Query.parse(MultiDict([("label", "team:net")])))
    assert [r.name for g in page.groups for r in g.rows] == ["web"]
    assert page.matched == 1 and page.total == 3
    grouped = await sp.build(Query(group="team"))
    assert [g.name for g in grouped.groups] == ["team: <b>x</b>", "team: net", "team: (none)"]
    body = (await sp.answer("html", Query(group="team"))).decode()
    assert "team: &lt;b&gt;x&lt;/b&gt;" in body
    assert 'href="?label=team%3Anet&amp;group=team"' in body


def test_bad_queries_are_named() -> None:
    with pytest.raises(QueryError, match="KEY:VALUE"):
        Query.parse(MultiDict([("label", "team")]))
    with pytest.raises(QueryError, match="bad page"):
        Query.parse(MultiDict([("page", "-1")]))
    assert Query.parse(MultiDict([("page", "3")])).page == 3


async def test_pages_cap_the_rows() -> None:
    targets = [target(f"t{i:05d}", 10000 + i) for i in range(PER_PAGE * 2 + 5)]
    sp = page_for(targets, History())
    first = await sp.build(Query())
    last = await sp.build(Query(page=99))
    assert first.pages == 3 and len(first.groups[0].rows) == PER_PAGE
    assert last.page == 3 and [r.name for r in last.groups[0].rows][-1] == targets[-1].name


async def test_json_is_the_same_page(three: Three) -> None:
    targets, history = three
    data = json.loads(await page_for(targets, history).answer("json", Query()))
    row = data["groups"][0]["rows"][0]
    assert row["name"] == EVIL and row["state"] == "down"
    change = row["changes"][0]
    assert (change["at"], change["from"], change["to"]) == (row["since"], "up", "down")
    assert change["reason"] == "ECONNREFUSED"
    assert len(row["buckets"]) == 60 and row["buckets"][-1][1:3] == [2, 1]
    assert row["chart"]["fail"] and row["chart"]["p50"]


async def test_answers_are_cached_briefly(three: Three) -> None:
    targets, history = three
    sp = page_for(targets, history)
    first = await sp.answer("json", Query())
    history.observe("web", rec(targets[0], TIMEOUT, NOW - 1, "ETIMEDOUT"), False)
    assert await sp.answer("json", Query()) == first  # within MAX_AGE: the same bytes
    sp._cache.clear()
    assert await sp.answer("json", Query()) != first


def test_chart_marks_failures_and_scales_to_the_max() -> None:
    from probe.daemon.history import Bucket

    buckets: list[Bucket | None] = [None] * 60
    buckets[10] = Bucket(0.0, 4, 0, (4, 0, 0, 0, 0), 1.0, 3.0)
    buckets[11] = Bucket(60.0, 4, 4, (0, 0, 4, 0, 0), None, None)
    chart = status._chart(buckets)
    assert chart.scale_ms == 5.0
    assert chart.p50.count("M") == 1 and chart.smoke.count("M") == 1
    assert chart.fail.startswith("M44 0.0")  # bucket 11, full height: all failed


async def test_concurrent_requests_share_one_build(three: Three) -> None:
    targets, history = three
    calls = 0

    def listed() -> list[ResolvedTarget]:
        nonlocal calls
        calls += 1
        return targets * 200  # enough rows that the build yields to the loop between slices

    sp = StatusPage(listed, history, clock=lambda: NOW)
    answers = await asyncio.gather(*(sp.answer("json", Query()) for _ in range(5)))
    assert calls == 1 and len(set(answers)) == 1
    await sp.answer("html", Query())
    assert calls == 1  # the page and its JSON come from one build
    await sp.answer("json", Query(page=2))
    assert calls == 2  # another query is another build


async def test_a_client_that_hangs_up_does_not_cancel_the_others(three: Three) -> None:
    targets, history = three
    sp = StatusPage(lambda: targets * 200, history, clock=lambda: NOW)
    first = asyncio.ensure_future(sp.answer("json", Query()))
    second = asyncio.ensure_future(sp.answer("json", Query()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()
    body = await second
    assert json.loads(body)["total"] == len(targets) * 200


async def test_a_kept_row_still_counts_its_time_and_takes_new_records(three: Three) -> None:
    targets, history = three
    now = [NOW]
    sp = StatusPage(lambda: targets, history, clock=lambda: now[0])

    async def down_row() -> status.Row:
        page = await sp.build(Query())
        return next(r for r in page.groups[0].rows if r.name == EVIL)

    assert (await down_row()).cells[3] == "10s"
    now[0] += 5
    assert (await down_row()).cells[3] == "15s"
    history.observe(EVIL, rec(targets[1], OPEN, now[0] - 1), True)
    row = await down_row()
    assert (row.state, row.cells[3], row.outcome) == ("up", "1s", OPEN)


# -- the order kept from state changes (status_order): checked against the plain sort --------


def expected(
    targets: list[ResolvedTarget], history: History, query: Query
) -> tuple[dict[str, int], list[tuple[str, list[str]]]]:
    """What a page must show, the slow way: every target looked at, sorted, sliced."""
    rank = {"down": 0, "unknown": 1, "up": 2}
    rows: list[tuple[tuple[bool, str, int, int], str, str]] = []
    counts = {"down": 0, "unknown": 0, "up": 0}
    for n, t in enumerate(targets):
        if any(t.labels.get(k) != v for k, v in query.labels):
            continue
        h = history.get(t.name)
        state = "unknown" if h is None or h.state is None else ("up" if h.state else "down")
        counts[state] += 1
        g = t.labels.get(query.group, "") if query.group else ""
        name = f"{query.group}: {g or '(none)'}" if query.group else ""
        rows.append(((g == "" and bool(query.group), g, rank[state], n), name, t.name))
    rows.sort()
    pages = max(1, -(-len(rows) // PER_PAGE))
    page = min(query.page, pages)
    groups: list[tuple[str, list[str]]] = []
    for _, name, tname in rows[(page - 1) * PER_PAGE : page * PER_PAGE]:
        if not groups or groups[-1][0] != name:
            groups.append((name, []))
        groups[-1][1].append(tname)
    return counts, groups


async def same_as_expected(sp: StatusPage, targets: list[ResolvedTarget], h: History) -> int:
    """Every page of every filter and grouping the targets offer; returns pages checked."""
    queries = [Query(), Query(group="team"), Query(group="zone")]
    queries += [Query(labels=(("team", f"t{i}"),)) for i in range(4)]
    queries += [Query(labels=(("team", "t1"), ("zone", "b")), group="zone")]
    checked = 0
    for base in queries:
        for number in range(1, 5):
            query = Query(base.labels, base.group, number)
            page = await sp.build(query)
            counts, groups = expected(targets, h, query)
            assert page.counts == counts, query
            assert [(g.name, [r.name for r in g.rows]) for g in page.groups] == groups, query
            checked += 1
    return checked


def many(count: int, seed: int) -> list[ResolvedTarget]:
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        labels = {"team": f"t{rnd.randrange(4)}"}
        if rnd.random() < 0.7:
            labels["zone"] = rnd.choice("abc")
        out.append(target(f"n{i:04d}", 10000 + i, **labels))
    return out


def flip(history: History, targets: list[ResolvedTarget], rnd: random.Random, k: int) -> None:
    for t in rnd.sample(targets, k):
        up = rnd.random() < 0.5
        history.observe(t.name, rec(t, OPEN if up else REFUSED, NOW - 5), up)


async def test_order_and_counts_follow_state_changes_without_a_pass() -> None:
    rnd = random.Random(7)
    targets = many(350, 1)
    history = History()
    sp = page_for(targets, history)
    assert await same_as_expected(sp, targets, history) == 32  # all unknown
    for _ in range(3):  # a few targets change between builds: caught up from the log
        flip(history, targets, rnd, 40)
        assert await same_as_expected(sp, targets, history) == 32


async def test_order_when_the_change_log_went_round() -> None:
    """More changes between two builds than the log keeps: the page looks at every target."""
    rnd = random.Random(8)
    targets = many(300, 2)
    history = History()
    history.moved = deque(maxlen=5)
    sp = page_for(targets, history)
    await same_as_expected(sp, targets, history)
    flip(history, targets, rnd, 200)
    assert history.moves - 5 > len(history.moved)
    await same_as_expected(sp, targets, history)


async def test_a_reload_changes_the_targets_labels_and_order() -> None:
    rnd = random.Random(9)
    first = many(250, 3)
    history = History()
    flip(history, first, rnd, 100)
    listed = [first]
    sp = StatusPage(lambda: listed[0], history, clock=lambda: NOW)
    await same_as_expected(sp, first, history)
    # a reload: some targets gone (and forgotten), some new, some with new labels
    second = [t for t in first[50:] if t.name != "n0100"] + many(320, 4)[250:]
    second = [target(t.name, t.port, team="t9") if t.name < "n0080" else t for t in second]
    for t in first[:50]:
        history.forget(t.name)
    listed[0] = second
    assert await same_as_expected(sp, second, history) == 32
    page = await sp.build(Query(labels=(("team", "t9"),)))
    assert page.matched == 30


async def test_a_name_listed_twice_follows_its_state_everywhere(three: Three) -> None:
    targets, history = three
    sp = StatusPage(lambda: targets * 3, history, clock=lambda: NOW)
    page = await sp.build(Query())
    assert page.counts == {"down": 3, "unknown": 3, "up": 3}
    history.observe("web", rec(targets[0], REFUSED, NOW - 1, "ECONNREFUSED"), False)
    page = await sp.build(Query())
    assert page.counts == {"down": 6, "unknown": 3, "up": 0}
    assert [r.name for r in page.groups[0].rows][:6] == ["web", EVIL] * 3


async def test_json_in_slices_is_the_page_encoded_whole() -> None:
    rnd = random.Random(10)
    targets = many(260, 5)
    history = History()
    flip(history, targets, rnd, 150)
    sp = page_for(targets, history)
    for query in (Query(), Query(group="zone", page=2)):
        page = await sp.build(query)
        assert json.loads(await status.render_json(page)) == json.loads(msgspec.json.encode(page))


async def test_state_is_the_daemons_damped_state_not_the_last_outcome(three: Three) -> None:
    """With down_after/up_after the daemon passes its damped state: failures that have not
    yet brought the target down leave it up (and in the up part of the order)."""
    targets, history = three
    sp = page_for(targets, history)
    web = targets[0]
    for i in range(2):  # down_after = 3: two failures, still up
        history.observe("web", rec(web, REFUSED, NOW - 5 + i, "ECONNREFUSED"), True)
    page = await sp.build(Query())
    row = next(r for r in page.groups[0].rows if r.name == "web")
    assert (row.state, row.error) == ("up", "ECONNREFUSED") and page.counts["up"] == 1
    history.observe("web", rec(web, REFUSED, NOW - 2, "ECONNREFUSED"), False)  # the third
    sp._cache.clear()
    page = await sp.build(Query())
    assert [r.name for r in page.groups[0].rows][:2] == ["web", EVIL]  # config order
    assert page.counts == {"down": 2, "unknown": 1, "up": 0}
    row = page.groups[0].rows[0]
    assert (row.changes[0].before, row.changes[0].after, row.changes[0].reason) == (
        "up", "down", "ECONNREFUSED")  # fmt: skip


# -- one scale per page, the 90-day bar, optional columns, a target's page, its badge ---------


async def test_one_latency_scale_for_the_page(three: Three) -> None:
    targets, history = three
    slow = target("slow", 3)
    targets.append(slow)
    history.observe("slow", Record(NOW - 5, slow.address, slow.host, slow.port, "127.0.0.1",
                                   "ipv4", "127.0.0.1", 45679, OPEN, None, 37.0, 1.0, 0, 0.0, 1),
                    True)  # fmt: skip
    page = await page_for(targets, history).build(Query())
    assert page.scale_ms == 50.0
    assert {r.chart.scale_ms for r in page.groups[0].rows} == {50.0}
    body = (await render_html_of(page)).decode()
    assert 'id="scale" class="axis">0 to 50 ms<' in body


async def render_html_of(page: status.Page) -> bytes:
    return await status.render_html(page, Query())


async def test_days_bar_from_the_store_and_optional_columns(three: Three, tmp_path: Path) -> None:
    from probe.daemon.store import Minute, open_store

    targets, history = three
    store = open_store(tmp_path, 90, lambda *a, **k: None)
    assert store is not None
    today = int(NOW // 86400)
    store.put(Minute("web", today * 1440 + 1, b"", 10, 1, 1.0, 2.0))
    store.put(Minute("web", (today - 2) * 1440 + 1, b"", 10, 0, 1.0, 2.0))
    store.start()
    store.close()
    store = open_store(tmp_path, 90, lambda *a, **k: None)
    sp = StatusPage(lambda: targets, history, clock=lambda: NOW, store=lambda: store,
                    extra_columns=("TLS",), extras=lambda n: {"TLS": f"<{n}>"})  # fmt: skip
    page = await sp.build(Query())
    web = next(r for r in page.groups[0].rows if r.name == "web")
    assert len(web.days) == status.DAYS and web.days[-1] == 90.0 and web.days[-3] == 100.0
    assert web.days[-2] is None and web.extra == {"TLS": "<web>"}
    body = (
        await status.render_html(page, Query(), lambda r: status.row_parts(r, ("TLS",)))
    ).decode()
    assert "&lt;web&gt;" in body and "<web>" not in body
    assert 'class="day-bad"' in body  # 90 %: a bad day
    store.close()


async def test_target_page_and_badge(three: Three) -> None:
    import xml.etree.ElementTree as ET

    from probe.daemon import target_page
    from probe.daemon.badge import badge_svg

    targets, history = three
    body = (await target_page.render(targets[1], history.get(EVIL), None, NOW)).decode()
    assert "<img" not in body and html_escaped(EVIL) in body
    assert body.count('<figure class="span"') == 4
    assert "ECONNREFUSED" in body and "127.0.0.1:45678" in body  # change reason, endpoint
    assert "<img" not in target_page.not_found(EVIL).decode()
    svg = ET.fromstring(badge_svg(EVIL, "down", 50.0, "30 d"))
    assert "".join(svg.itertext()).startswith(EVIL)


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)
