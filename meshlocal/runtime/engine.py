"""A thin, typed adapter over the docker SDK (synchronous): the Engine class.

Async callers wrap calls in `asyncio.to_thread`. Every engine error leaves
this module as a MeshlocalError subclass (see engineerrors.py). The value
types it takes and returns are in enginetypes.py, the reading of Docker's
raw answers in enginedecode.py; all are re-exported here. Networks are in
networks.py (mixed in), a swarm's services and tasks in swarmengine.py.

The event and log streams for asyncio callers live in streams.py: the CLI,
which only calls the engine, does not load asyncio.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.runtime import enginehost
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import HealthReport
from meshlocal.runtime.enginedecode import (
    HEALTH,
    STATUS_EXIT,
    docker_time,
    health_from_status,
    health_report,
)
from meshlocal.runtime.enginedecode import parse_event as parse_event
from meshlocal.runtime.enginedecode import split_lines as split_lines
from meshlocal.runtime.engineerrors import engine_errors as engine_errors
from meshlocal.runtime.engineerrors import map_docker_error as map_docker_error
from meshlocal.runtime.engineerrors import parse_port_in_use as parse_port_in_use
from meshlocal.runtime.enginehost import EngineHost
from meshlocal.runtime.enginetypes import ContainerEvent as ContainerEvent
from meshlocal.runtime.enginetypes import ContainerInfo as ContainerInfo
from meshlocal.runtime.enginetypes import ContainerSpec as ContainerSpec
from meshlocal.runtime.enginetypes import NetworkInfo as NetworkInfo
from meshlocal.runtime.enginetypes import Removed as Removed
from meshlocal.runtime.networks import Networks

if TYPE_CHECKING:
    import asyncio

    from meshlocal.runtime.streams import EventStream, LogStream

_NS = 1_000_000_000


def _healthcheck_dict(check: ContainerHealthCheck) -> dict[str, Any]:
    test = list(check.command)
    if test == ["NONE"]:
        return {"test": test}  # switch off the image's own HEALTHCHECK
    if test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD-SHELL", " ".join(test)]  # a bare command string: run it with a shell
    return {
        "test": test,
        "interval": int(check.interval_s * _NS),
        "timeout": int(check.timeout_s * _NS),
        "retries": check.retries,
        "start_period": int(check.start_period_s * _NS),
    }


# -- the engine -------------------------------------------------------------------------


_REMOVE_ORDER = {
    L.Role.SIDECAR.value: 0,
    L.Role.PROBE.value: 0,
    L.Role.REPLICA.value: 1,
    L.Role.PAUSE.value: 2,
    L.Role.RUN_COMMAND.value: 0,  # a one-off's command, then the holder of its namespace
    L.Role.RUN.value: 2,
    L.Role.DATAPLANE.value: 3,
    L.Role.PUBSUB.value: 2,
    L.Role.VIP_HOLDER.value: 2,
    L.Role.CONTROLLER.value: -1,  # first: it would replace what goes after it
}


class Engine(Networks):
    """The Docker operations meshlocal needs, with errors already mapped."""

    def __init__(self, client: docker.DockerClient, host: EngineHost | None = None) -> None:
        self.client = client
        self.api = client.api
        self.host = host or enginehost.current()

    @classmethod
    def from_env(cls, timeout: float = 30.0) -> Engine:
        """Connect like the docker CLI does (DOCKER_HOST, ...) and check the engine answers.

        ssh:// goes through the `ssh` program (the SDK's paramiko is not
        installed), so ~/.ssh/config, agents and jump hosts work as for docker.
        """
        host = enginehost.apply_context(None)  # DOCKER_CONTEXT, current context: as the CLI
        with engine_errors():
            client = docker.from_env(timeout=int(timeout), use_ssh_client=host.ssh)
            client.ping()
        return cls(client, host)

    def where(self) -> dict[str, Any]:
        """Where meshlocal runs things: the engine's URL and host, for `ps`."""
        with engine_errors("asking the engine who it is"):
            info = self.client.info()
        return {
            "url": self.host.url,
            "context": self.host.context,
            "remote": self.remote,
            "host": info.get("Name"),
            "version": info.get("ServerVersion"),
        }

    @property
    def remote(self) -> bool:
        """Published 127.0.0.1 ports are another host's (reach them through tunnel.py)."""
        return self.host.remote

    def close(self) -> None:
        self.client.close()

    # -- containers -------------------------------------------------------------------

    def create_container(self, spec: ContainerSpec) -> str:
        host_config = self.api.create_host_config(
            network_mode=spec.network_mode or spec.network,
            dns=list(spec.dns) or None,
            dns_search=list(spec.dns_search) or None,
            dns_opt=list(spec.dns_opt) or None,
            port_bindings=dict(spec.ports) or None,
            binds=list(spec.binds) or None,
            init=spec.init or None,
            cap_add=list(spec.cap_add) or None,
            cap_drop=list(spec.cap_drop) or None,
            security_opt=list(spec.security_opt) or None,
            read_only=spec.read_only or None,
            tmpfs=dict(spec.tmpfs) or None,
            sysctls=dict(spec.sysctls) or None,
            restart_policy={"Name": spec.restart_policy} if spec.restart_policy else None,
        )
        networking = None
        if spec.network and not spec.network_mode:
            networking = self.api.create_networking_config(
                {
                    spec.network: self.api.create_endpoint_config(
                        aliases=list(spec.aliases) or None, ipv4_address=spec.ipv4_address
                    )
                }
            )
        with engine_errors(f"creating container {spec.name}"):
            created = self.api.create_container(
                image=spec.image,
                command=list(spec.command) if spec.command is not None else None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                name=spec.name,
                hostname=None if spec.network_mode else spec.hostname,
                environment=dict(spec.environment),
                mac_address=spec.mac_address,
                labels=dict(spec.labels),
                ports=list(spec.ports) or None,
                host_config=host_config,
                networking_config=networking,
                healthcheck=_healthcheck_dict(spec.healthcheck) if spec.healthcheck else None,
                user=spec.user,
                working_dir=spec.working_dir,
                stop_signal=spec.stop_signal,
            )
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        with engine_errors(f"starting container {container_id[:12]}"):
            self.api.start(container_id)

    def run_container(self, spec: ContainerSpec) -> str:
        """Create and start; a container that cannot start is removed again."""
        cid = self.create_container(spec)
        try:
            self.start(cid)
        except MeshlocalError:
            self.remove(cid)
            raise
        return cid

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """None when the container is gone."""
        try:
            with engine_errors():
                raw = self.api.inspect_container(container_id)
        except RuntimeFailure:
            return None
        state = raw.get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        nets = (raw.get("NetworkSettings") or {}).get("Networks") or {}
        return ContainerInfo(
            id=str(raw["Id"]),
            name=str(raw.get("Name", "")).lstrip("/"),
            image=str((raw.get("Config") or {}).get("Image", "")),
            labels=dict((raw.get("Config") or {}).get("Labels") or {}),
            state=str(state.get("Status", "")),
            health=HEALTH.get(health) if health else None,
            addresses={n: str(v.get("IPAddress") or "") for n, v in nets.items()},
            exit_code=None if state.get("Running") else state.get("ExitCode"),
            image_id=str(raw.get("Image") or ""),
            created=str(raw.get("Created") or ""),
            started_at=docker_time(state.get("StartedAt")),
            finished_at=docker_time(state.get("FinishedAt")),
            macs={n: str(v.get("MacAddress") or "") for n, v in nets.items()},
        )

    def health_report(self, container_id: str) -> HealthReport | None:
        """The health check's command and its last run, from Docker's health log."""
        try:
            with engine_errors():
                raw = self.api.inspect_container(container_id)
        except RuntimeFailure:
            return None
        return health_report(raw)

    def list_containers(
        self,
        project: str,
        env: str | None = None,
        *,
        role: L.Role | None = None,
        service: str | None = None,
        running_only: bool = False,
    ) -> list[ContainerInfo]:
        with engine_errors("listing containers"):
            rows = self.api.containers(
                all=not running_only,
                filters={"label": L.filters(project, env, role=role, service=service)},
            )
        out = []
        for row in rows:
            status = str(row.get("Status", ""))
            exit_match = STATUS_EXIT.search(status)
            nets = (row.get("NetworkSettings") or {}).get("Networks") or {}
            out.append(
                ContainerInfo(
                    id=str(row["Id"]),
                    name=str((row.get("Names") or ["/"])[0]).lstrip("/"),
                    image=str(row.get("Image", "")),
                    labels=dict(row.get("Labels") or {}),
                    state=str(row.get("State", "")),
                    health=health_from_status(status),
                    addresses={n: str(v.get("IPAddress") or "") for n, v in nets.items()},
                    exit_code=int(exit_match.group(1)) if exit_match else None,
                )
            )
        return sorted(out, key=lambda c: (c.service or "", c.index or 0, c.name))

    def list_replicas(
        self, project: str, env: str | None = None, service: str | None = None
    ) -> list[ContainerInfo]:
        return self.list_containers(project, env, role=L.Role.REPLICA, service=service)

    def stop(self, container_id: str, timeout: float = 10.0) -> None:
        with contextlib.suppress(RuntimeFailure), engine_errors():
            self.api.stop(container_id, timeout=int(max(0, timeout)))

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        with contextlib.suppress(RuntimeFailure), engine_errors():
            self.api.kill(container_id, signal=signal)

    def remove(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is fine."""
        try:
            self.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            if "already in progress" in text or "No such container" in text:
                return
            raise map_docker_error(exc, f"removing container {container_id[:12]}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise map_docker_error(exc) from exc

    def read_file(self, container_id: str, path: str) -> str | None:
        """A file's text from a container's filesystem; None when it can't be read."""
        try:
            stream, _ = self.api.get_archive(container_id, path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None else None
                return handle.read().decode() if handle is not None else None
        except (docker.errors.DockerException, tarfile.TarError, OSError):
            return None

    def write_file(self, container_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Put a file into a container's filesystem (its directory must exist)."""
        directory, _, name = path.rpartition("/")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with engine_errors(f"writing {path} in container {container_id[:12]}"):
            self.api.put_archive(container_id, directory or "/", buf.getvalue())

    def rename(self, container_id: str, name: str) -> None:
        with engine_errors(f"renaming container {container_id[:12]}"):
            self.api.rename(container_id, name)

    def logs(self, container_id: str, tail: int | str = 20) -> list[str]:
        """The last `tail` log lines (stdout and stderr); [] when the container is gone."""
        try:
            raw = self.api.logs(container_id, stdout=True, stderr=True, tail=tail)
        except docker.errors.DockerException:
            return []
        return bytes(raw).decode(errors="replace").splitlines()

    def open_logs(
        self,
        container_id: str,
        *,
        follow: bool = True,
        tail: int | str = "all",
        since: float | None = None,
    ) -> Any:
        """The raw log stream (a closable iterator of byte chunks)."""
        with engine_errors(f"reading logs of {container_id[:12]}"):
            return self.api.logs(
                container_id,
                stdout=True,
                stderr=True,
                stream=True,
                follow=follow,
                tail=tail,
                since=since,
            )

    def follow_logs(self, container_id: str, **kwargs: Any) -> Iterator[str]:
        """Log lines (stdout and stderr, in order) as they come; ends when the container does."""
        count = 0
        for line in split_lines(self.open_logs(container_id, **kwargs)):
            count += 1
            yield line
        yield from self._unflushed(container_id, count, kwargs)

    def _unflushed(self, container_id: str, count: int, kwargs: Mapping[str, Any]) -> list[str]:
        """Lines a follow stream missed at the container's exit.

        Docker 20.10 sometimes ends a follow stream before the last, unterminated
        line is flushed to it (see docs/docker-notes.md); a plain read has it.
        """
        if kwargs.get("tail", "all") != "all" or kwargs.get("since") is not None:
            return []
        return self.logs(container_id, tail="all")[count:]

    def log_stream(
        self, container_id: str, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> LogStream:
        """`follow_logs` delivered to asyncio (call from the event loop)."""
        import asyncio

        from meshlocal.runtime.streams import LogStream

        return LogStream(self, container_id, loop or asyncio.get_running_loop(), **kwargs)

    def exec(self, container_id: str, cmd: Sequence[str], timeout: float = 10.0) -> tuple[int, str]:
        """Run `cmd` inside a container: (exit code, combined output).

        RuntimeFailure when it has not finished within `timeout` seconds (the
        process is left to the container; wrap it in `timeout N` to bound it there).
        """
        with engine_errors(f"exec in {container_id[:12]}"):
            exec_id = self.api.exec_create(container_id, list(cmd), stdout=True, stderr=True)
            pool = ThreadPoolExecutor(max_workers=1)
            try:
                out = pool.submit(self.api.exec_start, exec_id, demux=False).result(timeout)
            except TimeoutError as exc:
                raise RuntimeFailure(
                    f"`{' '.join(cmd)}` in {container_id[:12]} did not finish in {timeout:g} s"
                ) from exc
            finally:
                pool.shutdown(wait=False)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        return (int(code) if code is not None else -1, bytes(out or b"").decode(errors="replace"))

    # -- clean-up -----------------------------------------------------------------------

    def remove_all(self, project: str, env: str | None = None) -> Removed:
        """Every container and network labelled for project (and env): idempotent."""
        containers = self.list_containers(project, env)
        containers.sort(key=lambda c: _REMOVE_ORDER.get(c.role or "", 1))
        groups: dict[int, list[str]] = {}
        for c in containers:
            groups.setdefault(_REMOVE_ORDER.get(c.role or "", 1), []).append(c.id)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for order in sorted(groups):
                list(pool.map(self.remove, groups[order]))
        removed_nets: list[str] = []
        with engine_errors("listing networks"):
            nets = self.api.networks(filters={"label": L.filters(project, env)})
        for net in nets:
            try:
                self.api.remove_network(net["Id"])
                if net.get("Driver") == "overlay":
                    self._gone(str(net["Id"]))
                removed_nets.append(str(net["Name"]))
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if "has active endpoints" in str(exc.explanation or exc):
                    self._remove_busy_network(str(net["Id"]), str(net["Name"]))
                    removed_nets.append(str(net["Name"]))
                else:
                    raise map_docker_error(exc, f"removing network {net['Name']}") from exc
        for vol in self.volumes(project, env):
            with contextlib.suppress(docker.errors.NotFound), engine_errors():
                self.api.remove_volume(vol, force=True)
        return Removed(tuple(c.name for c in containers), tuple(removed_nets))

    def volumes(self, project: str, env: str | None = None) -> list[str]:
        """The volumes meshlocal made for a project (the data plane's link)."""
        with engine_errors("listing volumes"):
            found = self.api.volumes(filters={"label": L.filters(project, env)})
        return [str(v["Name"]) for v in (found or {}).get("Volumes") or []]

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> str:
        with engine_errors(f"creating volume {name}"):
            self.api.create_volume(name=name, labels=dict(labels))
        return name

    def run_to_end(self, spec: ContainerSpec, timeout: float = 30.0) -> tuple[int, list[str]]:
        """Run a short-lived helper to its end: (exit code, its output); removed after."""
        cid = self.run_container(spec)
        try:
            with engine_errors(f"waiting for {spec.name}"):
                result = self.api.wait(cid, timeout=timeout)
            return int(result.get("StatusCode", -1)), self.logs(cid, "all")
        finally:
            self.remove(cid)

    def exec_capture(
        self,
        container_id: str,
        command: Sequence[str],
        environment: Mapping[str, str],
        timeout: float,
    ) -> tuple[int, bytes, bytes]:
        """`docker exec` to its end: (exit code, stdout, stderr). A client of its own,
        so a long command outlives the engine client's read timeout."""
        with engine_errors("connecting to the Docker engine"):
            client = docker.from_env(timeout=int(timeout) + 10, use_ssh_client=self.host.ssh).api
        try:
            with engine_errors(f"running a command in {container_id[:12]}"):
                made = client.exec_create(
                    container_id, list(command), environment=dict(environment)
                )
                out, err = client.exec_start(made["Id"], demux=True)
                code = client.exec_inspect(made["Id"]).get("ExitCode")
        finally:
            client.close()
        return int(code if code is not None else -1), out or b"", err or b""

    def projects(self) -> list[tuple[str, str]]:
        """(project, env) pairs that have something running: for `down --all`, `ps`."""
        with engine_errors("listing containers"):
            rows = self.api.containers(all=True, filters={"label": [L.PROJECT]})
            nets = self.api.networks(filters={"label": [L.PROJECT]})
        pairs = {
            ((r.get("Labels") or {}).get(L.PROJECT, ""), (r.get("Labels") or {}).get(L.ENV, ""))
            for r in [*rows, *nets]
        }
        return sorted(p for p in pairs if p[0])

    # -- events ---------------------------------------------------------------------------

    def events(
        self, project: str, env: str | None, loop: asyncio.AbstractEventLoop | None = None
    ) -> EventStream:
        """Subscribe to container events of one environment (call from the event loop)."""
        import asyncio

        from meshlocal.runtime.streams import EventStream

        return EventStream(self.client, L.filters(project, env), loop or asyncio.get_running_loop())
