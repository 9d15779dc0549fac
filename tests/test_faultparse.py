"""Reading faults as users write them, and checking them against a workspace (pure):
every field, every refusal (a FaultError with a message that says what to write), and
a fuzz that must only ever get a Fault or a FaultError."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlocal.errors import FaultError, Location, MeshlocalError
from meshlocal.faultparse import (
    FIELDS,
    check,
    parse_fault,
    parse_ms,
    parse_percent,
    parse_rate,
    rebuild,
)
from meshlocal.faults import DnsAnswer, Fault, FaultTable, Kind
from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel

BACKEND = ServiceType.BACKEND_SERVICE
LBWS = ServiceType.LOAD_BALANCED_WEB_SERVICE
WORKER = ServiceType.WORKER_SERVICE


def svc(
    name: str,
    type_: ServiceType = BACKEND,
    port: int | None = 80,
    connect: bool = True,
    app_protocol: str | None = None,
) -> Service:
    return Service(
        name=name,
        type=type_,
        manifest_path=Path(f"/ws/copilot/{name}/manifest.yml"),
        port=port,
        target_port=port,
        connect=Connect(connect),
        app_protocol=app_protocol,
    )


NAMING = NamingModel(
    EnvironmentSpec(
        Workspace(Path("/ws"), "kudos", {}, {}),
        Environment("test", None),
        (
            svc("api"),  # TCP endpoint
            svc("front-end", LBWS, app_protocol="http"),
            svc("rpc", port=50051, app_protocol="grpc"),
            svc("h2", port=8443, app_protocol="http2"),
            svc("legacy", port=9000, connect=False),  # Service Discovery only
            svc("worker", WORKER, port=None),  # a Service Connect client, no name
        ),
    )
)


def parsed(**fields: Any) -> Fault:
    return parse_fault(fields)


def checked(**fields: Any) -> Fault:
    return check(parse_fault(fields), NAMING)


# -- every field -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"latency": "200ms"}, Fault("api", Kind.LATENCY, latency_ms=200)),
        ({"latency": "1.5s"}, Fault("api", Kind.LATENCY, latency_ms=1500)),
        ({"latency": "1m"}, Fault("api", Kind.LATENCY, latency_ms=60_000)),
        ({"latency": 250}, Fault("api", Kind.LATENCY, latency_ms=250)),
        ({"latency": 0.5}, Fault("api", Kind.LATENCY, latency_ms=0.5)),
        (
            {"latency": "200ms", "jitter": "50ms"},
            Fault("api", Kind.LATENCY, latency_ms=200, jitter_ms=50),
        ),
        ({"bandwidth": "64KB/s"}, Fault("api", Kind.BANDWIDTH, rate=64_000)),
        ({"bandwidth": "1MB/s"}, Fault("api", Kind.BANDWIDTH, rate=1_000_000)),
        ({"bandwidth": "2MiB/s"}, Fault("api", Kind.BANDWIDTH, rate=2 * 1024 * 1024)),
        ({"bandwidth": "500B/s"}, Fault("api", Kind.BANDWIDTH, rate=500)),
        ({"bandwidth": "64kbps"}, Fault("api", Kind.BANDWIDTH, rate=64_000)),
        ({"bandwidth": 64}, Fault("api", Kind.BANDWIDTH, rate=64_000)),  # Toxiproxy's KB/s
        ({"refuse": True}, Fault("api", Kind.REFUSE)),
        ({"reset": True}, Fault("api", Kind.RESET)),
        ({"reset_after": "1024"}, Fault("api", Kind.RESET, after_bytes=1024)),
        ({"reset": True, "reset_after": 10}, Fault("api", Kind.RESET, after_bytes=10)),
        ({"partition": True, "from": "web"}, Fault("api", Kind.PARTITION, source="web")),
        ({"abort": 503}, Fault("api", Kind.ABORT, http_status=503)),
        ({"abort": "429"}, Fault("api", Kind.ABORT, http_status=429)),
        ({"grpc_status": 14}, Fault("api", Kind.ABORT, grpc_status=14)),
        ({"dns": "NXDOMAIN"}, Fault("api", Kind.DNS, dns=DnsAnswer.NXDOMAIN)),
        ({"dns": "servfail"}, Fault("api", Kind.DNS, dns=DnsAnswer.SERVFAIL)),
        (
            {"dns": "delay", "latency": "300ms", "jitter": 20},
            Fault("api", Kind.DNS, dns=DnsAnswer.DELAY, latency_ms=300, jitter_ms=20),
        ),
        (
            {"dns": "nxdomain", "dns_name": "API.Test.Kudos.Local."},
            Fault("api", Kind.DNS, dns=DnsAnswer.NXDOMAIN, dns_name="api.test.kudos.local"),
        ),
        ({"refuse": True, "percent": "30%"}, Fault("api", Kind.REFUSE, percent=30)),
        ({"refuse": True, "percent": 12.5}, Fault("api", Kind.REFUSE, percent=12.5)),
        ({"refuse": True, "percent": 0}, Fault("api", Kind.REFUSE, percent=0)),
        ({"refuse": True, "from": " front-end "}, Fault("api", Kind.REFUSE, source="front-end")),
        ({"refuse": True, "replica": "2"}, Fault("api", Kind.REFUSE, replica=2)),
        ({"refuse": True, "seed": 7}, Fault("api", Kind.REFUSE, seed=7)),
        ({"refuse": True, "seed": 0}, Fault("api", Kind.REFUSE, seed=0)),
        ({"refuse": True, "id": " Slow-API.1 "}, Fault("api", Kind.REFUSE, id="slow-api.1")),
        # unset flags (None, False) are no kind: the CLI passes every flag
        ({"refuse": False, "reset": True, "abort": None}, Fault("api", Kind.RESET)),
    ],
)
def test_fields(fields: dict[str, Any], want: Fault) -> None:
    assert parse_fault({"service": "api", **fields}) == want


def test_every_field_is_read() -> None:
    fault = parse_fault(
        {
            "id": "all",
            "service": "api",
            "dns": "delay",
            "latency": "10ms",
            "jitter": "2ms",
            "dns_name": "api.test.kudos.local",
            "percent": "50",
            "from": "front-end",
            "seed": "3",
        }
    )
    assert fault == Fault(
        "api",
        Kind.DNS,
        id="all",
        percent=50,
        latency_ms=10,
        jitter_ms=2,
        dns=DnsAnswer.DELAY,
        dns_name="api.test.kudos.local",
        source="front-end",
        seed=3,
    )
    assert not fault.declared
    assert set(FIELDS) == {
        "id",
        "service",
        "latency",
        "jitter",
        "bandwidth",
        "refuse",
        "reset",
        "reset_after",
        "partition",
        "abort",
        "grpc_status",
        "dns",
        "dns_name",
        "percent",
        "from",
        "replica",
        "seed",
    }


# -- what parse_fault refuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"service": "api", "latency": "1s", "toxicity": 1}, "unknown fault field 'toxicity'"),
        ({"latency": "1s"}, "a fault needs the service it applies to"),
        ({"service": "  ", "latency": "1s"}, "a fault needs the service it applies to"),
        ({"service": "api"}, "the fault on api says nothing to inject"),
        ({"service": "api", "percent": 50}, "the fault on api says nothing to inject"),
        ({"service": "api", "latency": "1s", "abort": 503}, "not latency and abort"),
        ({"service": "api", "refuse": True, "reset": True}, "not refuse and reset"),
        ({"service": "api", "partition": True, "dns": "nxdomain"}, "not partition and dns"),
        ({"service": "api", "latency": "fast"}, "latency must be a duration such as 200ms"),
        ({"service": "api", "latency": ""}, "latency must be a duration"),
        ({"service": "api", "latency": True}, "latency must be a duration, not True"),
        ({"service": "api", "latency": "-5ms"}, "latency can't be negative (-5ms)"),
        ({"service": "api", "latency": -5}, "latency can't be negative (-5ms)"),
        ({"service": "api", "latency": "11m"}, "latency of 660s is longer than 10 minutes"),
        ({"service": "api", "latency": 10**400}, "longer than 10 minutes"),
        ({"service": "api", "latency": float("nan")}, "latency must be a duration, not nan"),
        ({"service": "api", "latency": "1s", "jitter": "-1ms"}, "jitter can't be negative"),
        ({"service": "api", "bandwidth": "fast"}, "bandwidth must be a rate such as 64KB/s"),
        ({"service": "api", "bandwidth": "0KB/s"}, "bandwidth must be at least 1B/s"),
        ({"service": "api", "bandwidth": 0}, "bandwidth must be at least 1B/s"),
        ({"service": "api", "bandwidth": float("inf")}, "bandwidth must be at least 1B/s"),
        ({"service": "api", "bandwidth": 10**400}, "bandwidth must be at least 1B/s"),
        ({"service": "api", "reset_after": -1}, "reset_after must be between 0 and"),
        ({"service": "api", "reset_after": "ten"}, "reset_after must be a whole number"),
        ({"service": "api", "reset_after": 1.5}, "reset_after must be a whole number"),
        ({"service": "api", "abort": 600}, "abort must be between 200 and 599, not 600"),
        ({"service": "api", "abort": 99}, "abort must be between 200 and 599, not 99"),
        ({"service": "api", "abort": "100"}, "abort must be between 200 and 599, not 100"),
        ({"service": "api", "abort": "204"}, "abort 204: that answer has no body"),
        ({"service": "api", "abort": 304}, "abort 304: that answer has no body"),
        ({"service": "api", "grpc_status": 0}, "grpc_status must be between 1 and 16, not 0"),
        ({"service": "api", "grpc_status": 17}, "grpc_status must be between 1 and 16, not 17"),
        ({"service": "api", "dns": "timeout"}, "dns must be nxdomain, servfail or delay"),
        ({"service": "api", "refuse": True, "percent": 101}, "percent must be between 0 and 100"),
        ({"service": "api", "refuse": True, "percent": -1}, "percent must be between 0 and 100"),
        ({"service": "api", "refuse": True, "percent": "lots"}, "percent must be a number"),
        ({"service": "api", "refuse": True, "percent": True}, "percent must be a number"),
        ({"service": "api", "refuse": True, "percent": "nan"}, "percent must be between"),
        ({"service": "api", "refuse": True, "replica": 0}, "replica must be between 1 and"),
        ({"service": "api", "refuse": True, "replica": True}, "replica must be a whole number"),
        ({"service": "api", "refuse": True, "seed": -1}, "seed must be between 0 and"),
        ({"service": "api", "refuse": True, "id": "Bad Id!"}, "fault id 'Bad Id!' must be"),
        ({"service": "api", "refuse": True, "id": "x" * 41}, "must be lower-case letters"),
    ],
)
def test_parse_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultError) as info:
        parse_fault(fields)
    assert message in info.value.message, info.value.message


def test_refusals_say_how_to_write_it_and_where() -> None:
    where = Location(Path("copilot/.meshlocal.yml"), 12)
    with pytest.raises(FaultError) as info:
        parse_fault({"service": "api", "latency": "soon"}, where)
    text = info.value.render()
    assert text.startswith("copilot/.meshlocal.yml:12: error: latency must be a duration")
    assert "hint: write latency: 200ms" in text and "Traceback" not in text
    assert isinstance(info.value, MeshlocalError)
    with pytest.raises(FaultError) as info:
        parse_fault({"service": "api", "nope": 1, "zap": 2})
    assert info.value.hint is not None and "latency" in info.value.hint


def test_unknown_field_names_that_are_no_text_are_still_reported() -> None:
    with pytest.raises(FaultError, match="unknown fault field"):
        parse_fault({"service": "api", 1: "x", "odd": 2})  # type: ignore[dict-item]


def test_text_without_a_unit_reads_as_the_number_would() -> None:
    # The CLI hands strings: `--bandwidth 64` is KB/s and `--latency 200` milliseconds,
    # as the YAML/JSON numbers 64 and 200 are.
    assert parse_rate("64") == parse_rate(64) == 64_000
    assert parse_rate(" 1.5 ") == parse_rate(1.5) == 1500
    assert parse_rate("64B/s") == 64 and parse_rate("64b") == 64  # a unit given: bytes
    assert parse_ms("200", "latency") == parse_ms(200, "latency") == 200
    assert parse_ms("1.5", "jitter") == 1.5
    assert parse_fault({"service": "api", "bandwidth": "64"}).rate == 64_000
    assert parse_fault({"service": "api", "latency": "200"}).latency_ms == 200
    with pytest.raises(FaultError, match="can't be negative"):
        parse_ms("-5", "latency")


def test_abort_keeps_statuses_with_a_body() -> None:
    for status in (200, 203, 205, 404, 503, 599):
        assert parse_fault({"service": "api", "abort": str(status)}).http_status == status


def test_value_parsers() -> None:
    assert parse_ms("1m30s", "latency") == 90_000
    assert parse_ms("0", "latency") == 0
    assert parse_rate("1.5KB/s") == 1500
    assert parse_rate("1GB/s") == 10**9
    assert parse_percent(" 30 % ".replace(" %", "%")) == 30


# -- what check refuses (the workspace) -------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"service": "nope", "refuse": True}, "no service 'nope' in this environment"),
        ({"service": "api", "refuse": True, "from": "ghost"}, "no client service 'ghost'"),
        ({"service": "api", "refuse": True, "jitter": "5ms"}, "jitter goes with latency"),
        ({"service": "api", "refuse": True, "dns_name": "api.x"}, "dns_name goes with a dns"),
        ({"service": "legacy", "latency": "1s"}, "service legacy has no Service Connect endpoint"),
        ({"service": "worker", "latency": "1s"}, "service worker has no Service Connect endpoint"),
        (
            {"service": "api", "latency": "1s", "from": "legacy"},
            "legacy is no Service Connect client",
        ),
        ({"service": "api", "partition": True}, "a partition is between two services"),
        ({"service": "api", "abort": 503}, "proxies TCP (no AppProtocol)"),
        ({"service": "api", "grpc_status": 14}, "proxies TCP (no AppProtocol)"),
        ({"service": "front-end", "grpc_status": 14}, "front-end's endpoint is http, not grpc"),
        ({"service": "h2", "grpc_status": 14}, "h2's endpoint is http2, not grpc"),
        ({"service": "rpc", "abort": 503}, "rpc's endpoint is grpc: abort with a gRPC status"),
        ({"service": "worker", "dns": "nxdomain"}, "service worker has no Service Discovery name"),
        ({"service": "api", "dns": "delay"}, "a dns delay needs its length"),
        ({"service": "api", "dns": "nxdomain", "latency": "1s"}, "latency goes with dns: delay"),
        ({"service": "api", "dns": "servfail", "jitter": "1s"}, "latency goes with dns: delay"),
        ({"service": "api", "dns": "nxdomain", "replica": 2}, "a dns fault is on a name"),
        (
            {"service": "api", "dns": "nxdomain", "dns_name": "rpc.test.kudos.local"},
            "rpc.test.kudos.local is not a name of api",
        ),
    ],
)
def test_check_refusals(fields: dict[str, Any], message: str) -> None:
    fault = parse_fault(fields)
    with pytest.raises(FaultError) as info:
        check(fault, NAMING)
    assert message in info.value.message, info.value.message


def test_check_refusal_hints_name_the_way_out() -> None:
    with pytest.raises(FaultError) as info:
        checked(service="nope", refuse=True)
    assert info.value.hint == "services: api, front-end, h2, legacy, rpc, worker"
    with pytest.raises(FaultError) as info:
        checked(service="api", abort=503)
    assert info.value.hint is not None and "app_protocol" in info.value.hint
    with pytest.raises(FaultError) as info:
        checked(service="api", partition=True)
    assert info.value.hint is not None and "--from" in info.value.hint


@pytest.mark.parametrize(
    "fields",
    [
        {"service": "api", "latency": "200ms", "jitter": "50ms", "percent": 30, "replica": 2},
        {"service": "api", "bandwidth": "64KB/s", "from": "worker"},  # a worker is a client
        {"service": "api", "reset_after": 100},
        {"service": "api", "partition": True, "from": "front-end"},
        {"service": "front-end", "abort": 503, "percent": 10, "seed": 1},
        {"service": "h2", "abort": 502},
        {"service": "rpc", "grpc_status": 14},
        {"service": "api", "dns": "nxdomain", "from": "legacy"},  # DNS: any client
        {"service": "legacy", "dns": "servfail"},  # Service Discovery only: has a name
        {"service": "api", "dns": "delay", "latency": "300ms", "jitter": "100ms"},
        {"service": "api", "dns": "nxdomain", "dns_name": "api.test.kudos.local"},
    ],
)
def test_check_accepts(fields: dict[str, Any]) -> None:
    fault = parse_fault(fields)
    assert check(fault, NAMING) == fault


def test_a_refused_fault_changes_nothing() -> None:
    table = FaultTable()
    table.add(checked(service="api", latency="1s"), NAMING)
    before = (table.faults(), dict(table.sc), dict(table.dns), table.version)
    for bad in ({"service": "api", "latency": "-1s"}, {"service": "ghost", "refuse": True}):
        with pytest.raises(FaultError):
            table.add(check(parse_fault(bad), NAMING), NAMING)
    assert (table.faults(), dict(table.sc), dict(table.dns), table.version) == before


# -- the fuzz --------------------------------------------------------------------------

_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["200ms", "-1s", "1.5s", "64KB/s", "30%", "nxdomain", "delay", "servfail", "api", "2"]
    )
)
_keys = st.sampled_from([*FIELDS, "from", "service"]) | st.text(max_size=8)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6), st.sampled_from(["api", "rpc", "legacy"]))
def test_parse_fault_returns_a_fault_or_raises_fault_error(
    raw: dict[str, Any], service: str
) -> None:
    raw.setdefault("service", service)
    try:
        fault = parse_fault(raw)
    except FaultError as exc:
        assert exc.message and "Traceback" not in exc.render()
        return
    assert isinstance(fault, Fault)
    assert 0 <= fault.percent <= 100 and fault.latency_ms >= 0 and fault.jitter_ms >= 0
    assert Fault.from_json(fault.to_json()) == fault
    named = replace(fault, id="x", declared=True)
    assert rebuild(json.loads(json.dumps(named.to_json()))) == named  # the state file's way
    try:
        assert check(fault, NAMING) == fault
    except FaultError as exc:
        assert exc.message


# -- what another process wrote (state file, link, restore) ---------------------------

_GOOD = Fault("api", Kind.ABORT, id="a", http_status=503, percent=30).to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"percent": "30"}, "fault field percent can't be '30'"),
        ({"percent": True}, "fault field percent can't be True"),
        ({"percent": 130}, "percent must be between 0 and 100"),
        ({"http_status": "503"}, "fault field http_status can't be '503'"),
        ({"http_status": 204}, "abort 204: that answer has no body"),
        ({"http_status": 0}, "abort must be between 200 and 599, not 0"),
        ({"replica": 1.5}, "fault field replica can't be 1.5"),
        ({"seed": "7"}, "fault field seed can't be '7'"),
        ({"service": 5}, "fault field service can't be 5"),
        ({"declared": "yes"}, "fault field declared can't be 'yes'"),
        ({"id": ""}, "needs its id"),
        ({"id": "Bad Id"}, "fault id 'Bad Id' must be"),
        ({"kind": "toxic"}, "malformed fault"),
        ({"latency_ms": 5.0}, "does not read back as it was written"),  # not an abort's
        ({"source": None}, "fault field source can't be None"),
    ],
)
def test_rebuild_refuses_a_fault_no_user_could_have_added(
    change: dict[str, Any], message: str
) -> None:
    assert rebuild(_GOOD) == Fault.from_json(_GOOD)
    with pytest.raises(FaultError) as info:
        rebuild({**_GOOD, **change})
    assert message in info.value.message, info.value.message


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_GOOD)), _values, max_size=4))
def test_rebuild_returns_a_fault_or_raises_fault_error(change: dict[str, Any]) -> None:
    try:
        fault = rebuild({**_GOOD, **change})
    except FaultError as exc:
        assert exc.message
        return
    assert rebuild(fault.to_json()) == fault
    assert isinstance(fault.percent, int | float) and 0 <= fault.percent <= 100
