"""The fault control plane: the data plane's admin API, its report over the link,
and the rules that keep faults across configurations and restarts.

The data plane runs in-process on loopback (no Docker): a real aiohttp
client on its admin port, a real socket pair for the link.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import dns.asyncquery
import dns.message
import pytest
from planekit import Controller, listen, load, serving, workspace
from prometheus_client.parser import text_string_to_metric_families

from meshlocal import faultcarry, faultkeep
from meshlocal.adminapi import AdminRefused, add_fault, fault_refusal
from meshlocal.agentconfig import AgentConfig
from meshlocal.dataplanes import DataPlane as RunningPlane
from meshlocal.dns import server as dns_server
from meshlocal.errors import FaultError
from meshlocal.faultparse import read_report
from meshlocal.faults import Fault, Kind
from meshlocal.faultstore import FaultStore, add_routes, merge_faults
from meshlocal.link import FaultReport, send
from meshlocal.naming import NamingModel
from meshlocal.serving import DataPlane
from meshlocal.statedir import state_file
from meshlocal.testfaults import FaultContext

DECLARED = (
    "      - {service: api, latency: 200ms, jitter: 50ms, percent: 30, from: front, id: slow-api}\n"
)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    dp = DataPlane(listen())
    await dp.configure(serving(load(workspace(tmp_path, DECLARED))))
    try:
        yield dp
    finally:
        await dp.stop()


def url(dp: DataPlane, path: str) -> str:
    return f"http://127.0.0.1:{dp.admin_port}{path}"


async def call(
    http: aiohttp.ClientSession, method: str, address: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, address, json=body) as resp:
        return resp.status, await resp.json()


# -- the admin API ---------------------------------------------------------------------


async def test_the_declared_fault_is_listed_with_its_counters(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "GET", url(plane, "/v1/faults"))
    assert status == 200
    (only,) = doc["faults"]
    assert only["id"] == "slow-api" and only["declared"] is True
    assert (only["latency_ms"], only["jitter_ms"], only["percent"]) == (200.0, 50.0, 30.0)
    assert (only["source"], only["seen"], only["hits"]) == ("front", 0, 0)
    assert only["description"] == "latency 200ms ±50ms (30%)"
    assert plane.faults.table.sc["api"][0].fault.id == "slow-api"  # the proxy's index
    # One table: the proxy's and the DNS server's.
    assert plane.core is not None and plane.core.faults is plane.faults.table
    assert plane.resolver is not None and plane.resolver.faults is plane.faults.table


async def test_add_list_remove_and_remove_all(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults"), {"service": "api", "abort": 503, "percent": "10"}
    )
    assert status == 200, doc
    added = doc["fault"]
    assert (added["id"], added["kind"], added["http_status"], added["percent"]) == (
        "f1",
        "abort",
        503,
        10.0,
    )
    assert added["declared"] is False and added["description"] == "abort 503 (10%)"
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults"), {"service": "tcp", "reset_after": 100, "id": "cut"}
    )
    assert status == 200 and doc["fault"]["id"] == "cut"
    _, doc = await call(http, "GET", url(plane, "/v1/faults"))
    assert [f["id"] for f in doc["faults"]] == ["slow-api", "f1", "cut"]
    assert set(plane.faults.table.sc) == {"api", "tcp"}

    status, doc = await call(http, "DELETE", url(plane, "/v1/faults/f1"))
    assert status == 200 and [f["id"] for f in doc["removed"]] == ["f1"]
    assert [f.id for f in plane.faults.table.faults()] == ["slow-api", "cut"]

    status, doc = await call(http, "DELETE", url(plane, "/v1/faults"))
    assert status == 200 and sorted(f["id"] for f in doc["removed"]) == ["cut", "slow-api"]
    _, doc = await call(http, "GET", url(plane, "/v1/faults"))
    assert doc == {"faults": []}
    assert plane.faults.table.sc == {} and plane.faults.table.dns == {}  # the hot path's test


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"service": "nope", "latency": "1s"}, "no service 'nope' in this environment"),
        ({"service": "api", "latency": "-5ms"}, "latency can't be negative"),
        ({"service": "api", "abort": 503, "percent": 150}, "percent must be between 0 and 100"),
        ({"service": "tcp", "abort": 503}, "proxies TCP (no AppProtocol)"),
        ({"service": "api", "partition": True}, "a partition is between two services"),
        ({"service": "api", "latency": "1s", "abort": 500}, "one fault injects one thing"),
        ({"service": "api", "lag": "1s"}, "unknown fault field 'lag'"),
        (
            {"service": "api", "latency": "1s", "id": "slow-api"},
            "declared in copilot/.meshlocal.yml",
        ),
        (["not", "a", "mapping"], "the body must be a JSON object"),
    ],
)
async def test_bad_input_is_a_400_with_the_message_and_nothing_changes(
    plane: DataPlane, http: aiohttp.ClientSession, body: Any, says: str
) -> None:
    before = plane.faults.table.snapshot()
    version = plane.faults.table.version
    status, doc = await call(http, "POST", url(plane, "/v1/faults"), body)
    assert status == 400, doc
    assert says in doc["error"], doc
    if says != "the body must be a JSON object":
        assert doc["error"].startswith("error: ")  # FaultError.render()
    assert plane.faults.table.snapshot() == before and plane.faults.table.version == version


async def test_an_id_in_use_replaces_a_runtime_fault_and_is_refused_for_a_declared_one(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    # As docs/cli.md and docs/pytest.md say: only runtime faults are replaced.
    for status_code in (503, 502):
        status, doc = await call(
            http,
            "POST",
            url(plane, "/v1/faults"),
            {"service": "api", "abort": status_code, "id": "x"},
        )
        assert status == 200, doc
    assert [(f.id, f.http_status) for f in plane.faults.table.faults()] == [
        ("slow-api", 0),
        ("x", 502),
    ]
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults"), {"service": "api", "abort": 500, "id": "slow-api"}
    )
    assert status == 400 and "fault slow-api is declared in copilot/.meshlocal.yml" in doc["error"]
    assert "meshlocal fault rm slow-api" in doc["error"]


async def test_a_body_that_is_not_json_is_a_400(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    async with http.post(url(plane, "/v1/faults"), data=b"{oops") as resp:
        assert resp.status == 400
        assert "JSON object" in (await resp.json())["error"]


async def test_removing_an_unknown_id_is_a_404_naming_the_known_ones(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "DELETE", url(plane, "/v1/faults/zzz"))
    assert status == 404
    assert doc["error"] == "error: no fault 'zzz'\n  hint: faults: slow-api"
    assert len(plane.faults.table) == 1


async def test_the_state_document_lists_the_faults(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", url(plane, "/v1/faults"), {"service": "tcp", "refuse": True})
    status, doc = await call(http, "GET", url(plane, "/v1/state"))
    assert status == 200
    assert [(f["id"], f["kind"]) for f in doc["faults"]] == [
        ("slow-api", "latency"),
        ("f1", "refuse"),
    ]


async def test_metrics_carry_the_counters(plane: DataPlane, http: aiohttp.ClientSession) -> None:
    active = plane.faults.table.get("slow-api")
    assert active is not None
    active.seen, active.hits = 10, 3
    async with http.get(url(plane, "/metrics")) as resp:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        text = await resp.text()
    labels = {"fault": "slow-api", "kind": "latency", "service": "api", "from": "front"}
    assert samples(text, "meshlocal_fault_hits_total") == [(labels, 3)]
    assert samples(text, "meshlocal_fault_seen_total") == [(labels, 10)]
    # The proxy's and the process's metrics beside them, the DNS counter too.
    assert samples(text, "meshlocal_dns_delayed_dropped_total") == [({}, 0)]
    assert samples(text, "process_cpu_seconds_total")
    assert "RequestCount" in {f.name for f in text_string_to_metric_families(text)}
    accept = {"Accept": "application/openmetrics-text"}
    async with http.get(url(plane, "/metrics"), headers=accept) as resp:
        assert resp.content_type == "application/openmetrics-text"
        om_text = await resp.text()
    assert om_text.endswith("# EOF\n")
    assert "meshlocal_fault_hits_total{" in om_text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def test_late_dns_answers_dropped_are_exported(
    plane: DataPlane, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dns_server, "MAX_DELAYED", 1)
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults"), {"service": "api", "dns": "delay", "latency": 300}
    )
    assert status == 200, doc
    assert plane.dns is not None
    query = dns.message.make_query("api.test.shop.local", "A")
    results = await asyncio.gather(
        *(dns.asyncquery.udp(query, "127.0.0.1", timeout=1.5, port=plane.dns.port) for _ in "abc"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dns.message.Message) for r in results) == 1, results
    _, state = await call(http, "GET", url(plane, "/v1/state"))
    assert state["dns_delayed_dropped"] == 2
    async with http.get(url(plane, "/metrics")) as resp:
        text = await resp.text()
    assert samples(text, "meshlocal_dns_delayed_dropped_total") == [({}, 2)]
    assert "# TYPE meshlocal_dns_delayed_dropped_total counter" in text


async def test_restore_is_a_503_until_the_data_plane_is_configured(tmp_path: Path) -> None:
    # The admin server starts before the first configuration reaches the store: `up`
    # must not take an empty answer for a restore done.
    store = FaultStore()
    app = aiohttp.web.Application()
    add_routes(app, store)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    admin = f"http://127.0.0.1:{port}"
    carried = [Fault("tcp", Kind.RESET, id="r").to_json()]
    try:
        with pytest.raises(AdminRefused) as info:
            await asyncio.to_thread(faultcarry._restore, admin, carried, 0.3)
        assert info.value.status == 503 and "no configuration yet" in info.value.message
        assert len(store.table) == 0

        # Configured meanwhile: the retry gets it.
        asked = asyncio.create_task(asyncio.to_thread(faultcarry._restore, admin, carried, 10))
        await asyncio.sleep(0.5)
        assert not asked.done()
        store.configure(naming_of(tmp_path), [])
        done = await asyncio.wait_for(asked, 10)
        assert [f["id"] for f in done["faults"]] == ["r"]
    finally:
        await runner.cleanup()


async def test_a_removed_declared_fault_stays_removed_until_up_restores_it(
    plane: DataPlane, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    status, _ = await call(http, "DELETE", url(plane, "/v1/faults/slow-api"))
    assert status == 200 and len(plane.faults.table) == 0
    # Another configuration (a re-run of `up` that changed something else) keeps it out...
    await plane.configure(serving(load(tmp_path)))
    assert len(plane.faults.table) == 0 and plane.faults.suppressed == {"slow-api"}
    # ...and `up` puts it back.
    status, doc = await call(http, "POST", url(plane, "/v1/faults/restore"), {})
    assert status == 200 and [f["id"] for f in doc["faults"]] == ["slow-api"]
    assert plane.faults.suppressed == set()


async def test_restore_adds_the_faults_a_replaced_data_plane_had(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", url(plane, "/v1/faults"), {"service": "tcp", "reset": True, "id": "x"})
    carried = [
        Fault("tcp", Kind.REFUSE, id="x").to_json(),  # it has its own x: kept
        {**Fault("api", Kind.ABORT, http_status=503, id="y").to_json(), "hits": 4},
        Fault("nope", Kind.REFUSE, id="z").to_json(),  # no such service any more
        Fault("api", Kind.REFUSE, id="slow-api", declared=True).to_json(),  # declared: not carried
    ]
    status, doc = await call(http, "POST", url(plane, "/v1/faults/restore"), {"faults": carried})
    assert status == 200, doc
    assert [(f["id"], f["kind"]) for f in doc["faults"]] == [
        ("slow-api", "latency"),
        ("x", "reset"),
        ("y", "abort"),
    ]
    assert doc["notes"] == [
        "fault z (* -> nope: refuse) is removed: no service 'nope' in this environment"
    ]
    # A malformed fault is skipped with a note, never let into the table.
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults/restore"), {"faults": [{"id": 1}]}
    )
    assert status == 200 and len(plane.faults.table) == 3
    assert doc["notes"][0].startswith("fault skipped: malformed fault"), doc
    status, doc = await call(http, "POST", url(plane, "/v1/faults/restore"), {"faults": "x"})
    assert status == 400 and len(plane.faults.table) == 3


async def test_restore_skips_a_fault_whose_fields_have_the_wrong_type(
    plane: DataPlane, http: aiohttp.ClientSession
) -> None:
    good = Fault("api", Kind.ABORT, http_status=503, percent=30, id="good").to_json()
    bad = {**Fault("api", Kind.ABORT, http_status=503, id="bad").to_json(), "percent": "30"}
    status, doc = await call(
        http, "POST", url(plane, "/v1/faults/restore"), {"faults": [bad, good]}
    )
    assert status == 200, doc
    assert [f["id"] for f in doc["faults"]] == ["slow-api", "good"]
    assert doc["notes"] == ["fault skipped: fault field percent can't be '30'"]
    assert plane.faults.table.get("bad") is None


async def test_a_configuration_replaces_declared_faults_and_drops_runtime_ones_that_no_longer_fit(
    plane: DataPlane, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for body in ({"service": "tcp", "refuse": True, "id": "r"}, {"service": "api", "abort": 500}):
        status, _ = await call(http, "POST", url(plane, "/v1/faults"), body)
        assert status == 200
    active = plane.faults.table.get("f1")
    assert active is not None
    active.hits = 5
    # tcp goes; the declared fault changes.
    changed = "      - {service: api, abort: 502, id: bad-gateway}\n"
    await plane.configure(serving(load(workspace(tmp_path, changed, ("api", "front")))))
    assert [f.id for f in plane.faults.table.faults()] == ["bad-gateway", "f1"]
    kept = plane.faults.table.get("f1")
    assert kept is not None and kept.hits == 5  # unchanged: its counters stay
    (note,) = plane.config_notes
    assert note.startswith("fault r (* -> tcp: refuse) is removed: no service 'tcp'"), note


# -- the link: reports, and a restart --------------------------------------------------


async def test_a_restarted_data_plane_takes_back_every_fault(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = serving(load(workspace(tmp_path, DECLARED)))
    first = DataPlane(listen())
    try:
        async with Controller(first) as link:
            ack = await link.configure(config)
            assert ack["error"] is None and ack["notes"] == []
            report = FaultReport.from_message(await link.expect("faults"))
            assert report is not None and [f.id for f in report.faults] == ["slow-api"]
            status, _ = await call(
                http,
                "POST",
                url(first, "/v1/faults"),
                {"service": "tcp", "reset": True, "id": "rst"},
            )
            assert status == 200
            message = await link.expect("faults", lambda m: len(m["faults"]) == 2)
            await call(http, "DELETE", url(first, "/v1/faults/slow-api"))
            message = await link.expect("faults", lambda m: len(m["faults"]) == 1)
            kept = FaultReport.from_message(json.loads(json.dumps(message)))
            assert kept is not None and kept.suppressed == ("slow-api",)
    finally:
        await first.stop()

    # A new process: the controller hands the report back before the configuration.
    second = DataPlane(listen())
    try:
        async with Controller(second) as link:
            await send(link.writer, kept.to_message())
            await link.configure(config)
            assert [(f.id, f.declared) for f in second.faults.table.faults()] == [("rst", False)]
            assert second.faults.suppressed == {"slow-api"}
            assert "tcp" in second.faults.table.sc
            echoed = FaultReport.from_message(await link.expect("faults"))
            assert echoed == kept

        # The controller restarted instead: it has no report, the data plane keeps its own
        # and says so; a stale report is not taken either.
        async with Controller(second) as link:
            stale = FaultReport((Fault("api", Kind.REFUSE, id="old"),))
            await send(link.writer, stale.to_message())
            told = FaultReport.from_message(await link.expect("faults"))
            assert told == kept
            await link.configure(config, 2)
            assert [f.id for f in second.faults.table.faults()] == ["rst"]
    finally:
        await second.stop()


async def test_a_malformed_report_is_ignored(tmp_path: Path) -> None:
    dp = DataPlane(listen())
    try:
        async with Controller(dp) as link:
            await send(link.writer, {"t": "faults", "faults": [{"kind": "nope"}]})
            await link.configure(serving(load(workspace(tmp_path))))
            assert len(dp.faults.table) == 0
    finally:
        await dp.stop()


# -- the rules, as pure functions --------------------------------------------------------


def naming_of(tmp_path: Path, services: tuple[str, ...] = ("api", "front", "tcp")) -> NamingModel:
    return NamingModel(load(workspace(tmp_path, "", services)))


def test_declared_faults_win_over_runtime_ones_with_their_id(tmp_path: Path) -> None:
    declared = [Fault("api", Kind.REFUSE, id="x", declared=True)]
    runtime = [Fault("tcp", Kind.RESET, id="x"), Fault("tcp", Kind.RESET, id="y")]
    keep, notes = merge_faults(declared, runtime, (), naming_of(tmp_path))
    assert [(f.id, f.service) for f in keep] == [("x", "api"), ("y", "tcp")]
    assert notes == ["fault x (* -> tcp: reset) gives way to the declared one"]


def test_suppressed_declared_faults_stay_out_and_unfit_ones_are_noted(tmp_path: Path) -> None:
    declared = [
        Fault("api", Kind.REFUSE, id="a", declared=True),
        Fault("tcp", Kind.ABORT, http_status=503, id="b", declared=True),  # TCP mode: no abort
    ]
    keep, notes = merge_faults(declared, [], {"a"}, naming_of(tmp_path))
    assert keep == []
    (note,) = notes
    assert note.startswith("declared fault b (* -> tcp: abort 503) is not injected: tcp's")


def test_a_fresh_store_adopts_a_report_and_a_loaded_one_keeps_its_own(tmp_path: Path) -> None:
    naming = naming_of(tmp_path)
    changes: list[int] = []
    store = FaultStore(lambda: changes.append(1))
    report = FaultReport(
        (Fault("api", Kind.REFUSE, id="d", declared=True), Fault("tcp", Kind.RESET, id="r")),
        ("gone",),
    )
    assert store.restore(report) is True
    assert len(store.table) == 0 and not changes  # nothing until its configuration
    notes = store.configure(
        naming, [Fault("api", Kind.LATENCY, latency_ms=5, id="d2", declared=True)]
    )
    # The report's declared fault is not taken: the configuration says which are declared.
    assert notes == [] and [f.id for f in store.table.faults()] == ["d2", "r"]
    assert store.suppressed == set()  # "gone" is declared no more
    assert changes == [1]
    assert store.restore(FaultReport()) is False  # loaded: its own set wins
    assert [f.id for f in store.table.faults()] == ["d2", "r"]


def test_the_report_round_trips_and_refuses_garbage() -> None:
    report = FaultReport(
        (
            Fault("api", Kind.LATENCY, id="a", latency_ms=200, jitter_ms=50, percent=30, seed=7),
            replace(Fault("api", Kind.REFUSE, id="b", source="front"), declared=True),
        ),
        ("c",),
    )
    assert FaultReport.from_message(json.loads(json.dumps(report.to_message()))) == report
    for bad in (
        {"t": "faults"},
        {"t": "faults", "faults": "x"},
        {"t": "faults", "faults": [1]},
        {"t": "faults", "faults": [{"service": "api"}]},
        {"t": "faults", "faults": [{"service": "api", "kind": "refuse"}]},  # no id
        {"t": "faults", "faults": [], "suppressed": "x"},
    ):
        assert FaultReport.from_message(bad) is None, bad


# -- what another process wrote: checked before it reaches the table -------------------


def test_a_state_file_fault_of_the_wrong_type_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = Fault("api", Kind.LATENCY, latency_ms=200, percent=30, id="good")
    path = tmp_path / "agent.faults.json"
    bad = {**Fault("api", Kind.REFUSE, id="bad").to_json(), "percent": "30"}
    path.write_text(json.dumps({"faults": [good.to_json(), bad], "suppressed": ["x"]}))
    with caplog.at_level("WARNING", "meshlocal.controller"):
        report = faultkeep.load(path)
    assert report == FaultReport((good,), ("x",))
    assert "fault field percent can't be '30'" in caplog.text
    # The link's message goes through the same reader on the data plane's side.
    assert read_report({"t": "faults", "faults": [bad]}, lambda _: None) == FaultReport()
    assert read_report({"t": "faults", "faults": "x"}, lambda _: None) is None


def test_a_host_mode_agent_keeps_its_fault_report_in_the_state_directory(
    tmp_path: Path,
) -> None:
    # Host mode has no kept configuration (`up` hands it one each time), so its
    # report goes where the environment's other files are, and `down` clears it.
    spec = load(workspace(tmp_path))
    host = AgentConfig(project="p-x", spec=spec, desired={}, mode="host")
    assert faultkeep.path_for(host) == state_file("p-x", "test", ".faults.json")
    kept = replace(host, mode="container", state_file="/state/agent.json")
    assert faultkeep.path_for(kept) == Path("/state/agent.faults.json")


class _Planes:
    def wait_admin(self, admin_url: str, timeout: float) -> None:
        pass  # the test's admin server is up before it is asked


async def test_up_warns_when_the_running_faults_could_not_be_read(tmp_path: Path) -> None:
    store = FaultStore()
    store.configure(naming_of(tmp_path), [])
    app = aiohttp.web.Application()
    add_routes(app, store)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    plane = RunningPlane("host", f"http://127.0.0.1:{port}", None, pid=1)
    said: list[str] = []
    try:
        carried = faultcarry.Carried(unread="the admin API does not answer")
        await asyncio.to_thread(
            faultcarry.restore,
            _Planes(),  # type: ignore[arg-type]
            plane,
            carried,
            5.0,
            said.append,
        )
    finally:
        await runner.cleanup()
    assert said == [
        "warning: the runtime faults of the running data plane could not be read "
        "(the admin API does not answer): if it was replaced, they are gone "
        "(`meshlocal fault ls`)"
    ]


async def test_a_refusal_reads_back_as_one_fault_error_for_the_cli_and_pytest(
    plane: DataPlane,
) -> None:
    admin = url(plane, "")
    with pytest.raises(AdminRefused) as info:
        await asyncio.to_thread(add_fault, admin, {"service": "nope", "refuse": True})
    error = fault_refusal(info.value)
    assert error.message == "no service 'nope' in this environment"
    assert error.hint == "services: api, front, tcp"
    assert error.render().count("error:") == 1
    # One translation, shared: `fault add` and `mesh.fault` raise the same error.
    with pytest.raises(FaultError) as raised:
        await asyncio.to_thread(
            FaultContext(lambda: admin, {"service": "nope", "refuse": True}).__enter__
        )
    assert raised.value.render() == error.render()
