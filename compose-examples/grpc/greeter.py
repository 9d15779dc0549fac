"""greeter: a gRPC server that says which replica answered.

No .proto and no protoc: the methods are registered with a generic handler
and their messages are raw bytes (no (de)serializer), so grpcio is the only
dependency.

  /greeter.Greeter/Hello  request: a name (UTF-8)
                          response: JSON {"message", "replica", "boot", "peer"}
  /greeter.Greeter/Fail   request: a status code name (default NOT_FOUND)
                          ends the call with that status, details naming this
                          replica, and trailing metadata x-replica

`boot` is random per process, so a replacement replica with the same name is
told apart. `peer` is who connected: the Service Connect proxy.

`python3 greeter.py check` is the manifest's image.healthcheck: it exits 0
once the server accepts connections on 127.0.0.1:$PORT. A plain TCP connect,
not a gRPC call: importing grpc once a second in three replicas would cost
more CPU than the server does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import threading
from concurrent import futures
from typing import Any

SERVICE = os.environ.get("COPILOT_SERVICE_NAME", "greeter")
PORT = int(os.environ.get("PORT", "50051"))
BOOT = secrets.token_hex(3)


def replica_name() -> str:
    """`greeter-2` from the container hostname `<app>-<hash>-<env>-greeter-2`."""
    host = socket.gethostname()
    index = host.rsplit("-", 1)[-1]
    return f"{SERVICE}-{index}" if index.isdigit() else host


REPLICA = replica_name()


def check() -> int:
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2):
            return 0
    except OSError:
        return 1


def main() -> None:
    if sys.argv[1:] == ["check"]:
        sys.exit(check())

    import grpc  # only the server needs it, not the health check

    def hello(request: bytes, context: Any) -> bytes:
        name = request.decode(errors="replace") or "world"
        answer = {"message": f"hello {name}", "replica": REPLICA, "boot": BOOT}
        return json.dumps({**answer, "peer": context.peer()}).encode()

    def fail(request: bytes, context: Any) -> bytes:
        code_name = request.decode(errors="replace") or "NOT_FOUND"
        code = grpc.StatusCode.__members__.get(code_name, grpc.StatusCode.UNKNOWN)
        context.set_trailing_metadata((("x-replica", REPLICA),))
        context.abort(code, f"{REPLICA} failed the call as asked ({code_name})")
        raise AssertionError("abort() raises")

    # request_deserializer / response_serializer left as None: bytes in, bytes out.
    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter",
        {
            "Hello": grpc.unary_unary_rpc_method_handler(hello),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{PORT}")
    server.start()
    print(f"{SERVICE} serving gRPC on :{PORT} as {REPLICA} (boot {BOOT})", flush=True)

    stopped = threading.Event()
    # PID 1 gets no default SIGTERM handling: stop promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        pass
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
