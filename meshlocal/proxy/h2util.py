"""Pure helpers of the HTTP/2 and gRPC proxy: h2 set-up, header rewriting, local replies."""

from __future__ import annotations

from collections.abc import Iterable

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.settings import SettingCodes, Settings
from hpack.struct import Header
from hyperframe.frame import Frame, GoAwayFrame

from meshlocal.proxy.respond import error_response

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Receive windows. Data is acknowledged (WINDOW_UPDATE) only once it has
# been handed to the other side, so a stream buffers at most STREAM_WINDOW
# and a connection at most CONN_WINDOW, however slow the other side reads.
STREAM_WINDOW = 1 << 20
CONN_WINDOW = 8 << 20
# Replica connection states.
CONNECTING, OPEN, DRAINING, CLOSED = range(4)

MAX_STREAMS = 1024  # advertised to clients (Envoy's default is unbounded)
ASSUMED_STREAMS = 100  # streams queued on a replica connection before its SETTINGS arrive

# Connection-specific fields (RFC 9113 8.2.2) never cross the proxy.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REPLACED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

# Simple on purpose: no h2c Upgrade, no HTTP/1 proxying on an http2/grpc port.
HTTP1_REFUSAL = error_response(
    505,
    "this Service Connect endpoint speaks HTTP/2 with prior knowledge only (appProtocol "
    "http2/grpc): use h2c prior knowledge, e.g. curl --http2-prior-knowledge",
)


class _ReplicaConnection(H2Connection):
    """h2 ends a connection on any GOAWAY; HTTP/2 (RFC 9113 6.8) and Envoy let
    the streams a graceful one covers finish: gRPC servers send one on every
    graceful stop, and failing their in-flight calls would be our doing.
    Relies on h2 4.x internals (pinned by test_grpc_graceful_goaway...).
    """

    held = b""  # what h2 would discard with the GOAWAY (say, a PING ACK)

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        state = self.state_machine.state
        self.held += super().data_to_send()
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR:
            self.state_machine.state = state
        return frames, events

    def data_to_send(self, amount: int | None = None) -> bytes:
        held, self.held = self.held, b""
        return held + super().data_to_send(amount)


def new_connection(*, client_side: bool) -> H2Connection:
    """An h2 connection with our windows; its preface is queued for sending."""
    cls = _ReplicaConnection if client_side else H2Connection
    conn = cls(H2Configuration(client_side=client_side, header_encoding=None))
    values = {
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
    }
    if client_side:
        values[SettingCodes.ENABLE_PUSH] = 0
    # Set before the first SETTINGS frame so h2's idea of our windows never
    # lags what the peer was told.
    conn.local_settings = Settings(client=client_side, initial_values=values)
    conn.initiate_connection()
    conn.increment_flow_control_window(CONN_WINDOW - 65535)  # the connection's starts at 64 KiB
    return conn


def header(headers: Iterable[Header], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def is_grpc(headers: Iterable[Header]) -> bool:
    ctype = header(headers, b"content-type")
    return ctype is not None and ctype.startswith(b"application/grpc")


def request_headers(headers: Iterable[Header], client_ip: bytes) -> list[tuple[bytes, bytes]]:
    """Headers for the replica: pseudo-headers first, X-Forwarded-* as the HTTP/1 path sets."""
    out: list[tuple[bytes, bytes]] = []
    xff: bytes | None = None
    authority = b""
    for k, v in headers:
        if k in HOP_BY_HOP:
            continue
        if k in _REPLACED:
            if k == b"x-forwarded-for":
                xff = v if xff is None else xff + b", " + v
            continue
        if k == b":authority":
            authority = v
        out.append((k, v))
    out.append((b"x-forwarded-for", client_ip if xff is None else xff + b", " + client_ip))
    out.append((b"x-forwarded-proto", b"http"))
    if authority:
        out.append((b"x-forwarded-host", authority))
    return out


def response_headers(headers: Iterable[Header], replica: bytes) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
    out.append((b"x-meshlocal-replica", replica))
    out.append((b"x-meshlocal-route", b"service-connect"))
    return out


def trailers(headers: Iterable[Header]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP]


def status_of(headers: Iterable[Header]) -> int:
    value = header(headers, b":status")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def grpc_status(headers: Iterable[Header]) -> int | None:
    value = header(headers, b"grpc-status")
    if value is None:
        return None
    # Only the 17 codes gRPC defines; anything else is UNKNOWN, as gRPC clients
    # read it (and a replica can't grow the per-status metrics without bound).
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 2:
        return 2
    code = int(text)
    return code if code <= 16 else 2


# Envoy's Grpc::Utility::grpcToHttpStatus (source/common/grpc/status.cc), used
# for outlier detection; unknown codes count as 500 there too.
_GRPC_TO_HTTP = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


def grpc_to_http(code: int) -> int:
    return _GRPC_TO_HTTP.get(code, 500)


def http_to_grpc(status: int) -> int:
    """Envoy's Grpc::Utility::httpToGrpcStatus: what its local replies carry."""
    if status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return {400: 13, 401: 16, 403: 7, 404: 12}.get(status, 2)


def percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, the rest %XX."""
    out = bytearray()
    for b in text.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def local_reply(
    status: int, message: str, *, grpc: bool, grpc_code: int | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A response made by the proxy: (headers, body); an empty body means headers only.

    For gRPC, as Envoy's sendLocalReply: a trailers-only response, HTTP 200,
    grpc-status mapped from the HTTP status (or `grpc_code`), the text in grpc-message.
    """
    route = (b"x-meshlocal-route", b"service-connect")
    if grpc:
        return [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % (http_to_grpc(status) if grpc_code is None else grpc_code)),
            (b"grpc-message", percent_encode(message)),
            route,
        ], b""
    body = message.encode() + b"\n"
    return [
        (b":status", b"%d" % status),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        route,
    ], body
