"""`meshlocal forward`: a remote engine's mesh, reachable from this machine until Ctrl-C."""

from __future__ import annotations

import threading

import click

from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.render import err, out
from meshlocal.cli.running import running_mesh
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import port_free, published_ports
from meshlocal.runtime.pubsub import EMULATOR_PORT
from meshlocal.runtime.pubsub import find as pubsub_find
from meshlocal.runtime.tunnel import Tunnel, on_overlay


def _local_port(wanted: int | None, remote: int) -> int:
    """`wanted` as given; else the remote's own number when it is free here, so the
    URLs (and replicas' COPILOT_LB_DNS `localhost:PORT`) read the same on both sides."""
    if wanted is not None:
        return wanted
    return remote if port_free(remote) else 0


@cli.command()
@env_option
@click.option(
    "--port", "public_port", type=int, default=None, help="Local port of the public endpoint."
)
@click.option(
    "--admin-port", type=int, default=None, help="Local port of the mesh page and admin API."
)
@click.option(
    "--once", is_flag=True, help="Print the URLs and return (for scripts: they close then)."
)
@pass_context
def forward(
    ctx: Context, env: str | None, public_port: int | None, admin_port: int | None, once: bool
) -> None:
    """Reach a mesh on a remote engine (--context, DOCKER_HOST), or a swarm, from here.

    The public endpoint, the mesh page with the admin API, and the local
    SNS/SQS listen on this machine's 127.0.0.1 and are carried through the
    engine's API to the data plane (a `docker exec` relay per connection),
    until Ctrl-C. On a local engine they are on 127.0.0.1 already: the URLs
    are printed and nothing is forwarded.
    """
    with running_mesh(ctx.directory, env) as dep:
        plane = dep.dataplane()
        emulator = pubsub_find(dep.engine, dep.project, dep.env)
        overlay = on_overlay(dep.engine, L.network_name(dep.project, dep.env))
        if not (dep.engine.remote or overlay) or plane.container_id is None:
            _print(plane.public_url, plane.admin_url, emulator.host_url if emulator else None)
            err.print("[+] the engine is local: nothing to forward", markup=False)
            return
        ports = published_ports(dep.engine, plane.container_id)
        owner = {PUBLIC_PORT: plane.container_id, ADMIN_PORT: plane.container_id}
        if emulator is not None:
            ports[EMULATOR_PORT] = emulator.host_port
            owner[EMULATOR_PORT] = emulator.container_id
        wanted = {PUBLIC_PORT: public_port, ADMIN_PORT: admin_port, EMULATOR_PORT: None}
        opened = {
            port: Tunnel(dep.engine, owner[port], port, local_port=_local_port(local, ports[port]))
            for port, local in wanted.items()
            if port in ports and port in owner
        }
        tunnels = list(opened.values())
        public, admin, queues = (opened.get(p) for p in (PUBLIC_PORT, ADMIN_PORT, EMULATOR_PORT))
        assert admin is not None  # every data plane publishes its admin port
        _print(public.url if public else None, admin.url, queues.url if queues else None)
        err.print(
            f"[+] forwarding from the engine at {dep.engine.host.url}; Ctrl-C stops",
            markup=False,
        )
        if once:
            return
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            err.print("[+] stopped forwarding; the mesh keeps running", markup=False)
        finally:
            for tunnel in tunnels:
                tunnel.close()


def _print(public: str | None, admin: str, queues: str | None) -> None:
    if public:
        out.print(f"Public endpoint: {public}", markup=False)
    out.print(f"Mesh page: {admin.rstrip('/')}/", markup=False)
    if queues:
        out.print(f"SNS/SQS: {queues}", markup=False)
