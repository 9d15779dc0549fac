"""`sidecars`: the extra containers of a service's task, read into :class:`Sidecar`.

Each sidecar has its own image (or build), port, variables, secrets,
command, depends_on and healthcheck. Mixed into
:class:`~meshlocal.manifest.loader.ServiceLoader`, whose state it reads.
"""

from __future__ import annotations

import re

from meshlocal.manifest import events, healthchecks
from meshlocal.manifest.containerenv import ContainerEnvReader
from meshlocal.manifest.image import ImageReader
from meshlocal.manifest.model import BuildSpec, Sidecar
from meshlocal.manifest.yaml12 import Map, Node, Scalar

_SIDECAR_FIELDS = frozenset(
    {
        "port",
        "image",
        "essential",
        "variables",
        "secrets",
        "depends_on",
        "healthcheck",
        "command",
        "entrypoint",
    }
)
_SIDECAR_NOT_EMULATED = ("credentialsParameter", "mount_points", "labels", "env_file")


class SidecarReader(ImageReader, ContainerEnvReader):
    """The `sidecars` section; images, variables and secrets as for the main container."""

    def sidecars(self, node: Node | None, not_emulated: list[str]) -> list[Sidecar]:
        f = self.f
        mapping = f.mapping(node, "sidecars")
        out: list[Sidecar] = []
        if mapping is None:
            return out
        for name, value in mapping.items.items():
            field = f"sidecars.{name}"
            sc = f.mapping(value, field)
            if sc is None:
                continue
            f.unknown(sc, _SIDECAR_FIELDS | set(_SIDECAR_NOT_EMULATED), field)
            not_emulated += [f"{field}.{k}" for k in _SIDECAR_NOT_EMULATED if k in sc]
            self.env_extension(sc.get("env_file"), f"{field}.env_file")
            image_node = sc.get("image")
            image: str | None = None
            build: BuildSpec | None = None
            if isinstance(image_node, Map):
                build = self.build(image_node.get("build"), f"{field}.image.build")
                image = f.string(image_node.get("location"), f"{field}.image.location")
                if build is not None and image is not None:
                    self.diag.error(
                        f"{field}.image: build and location exclude each other",
                        image_node.loc,
                        "keep one of them",
                    )
            else:
                image = f.string(image_node, f"{field}.image")
            if image is None and build is None:
                self.diag.error(
                    f"{field}.image: a sidecar needs an image",
                    sc.loc,
                    "add image: REPO:TAG or image: {build: path/to/Dockerfile}",
                )
            out.append(
                Sidecar(
                    name=name,
                    image=image,
                    build=build,
                    port=self.sidecar_port(sc.get("port"), f"{field}.port"),
                    variables=self.variables(sc.get("variables"), f"{field}.variables"),
                    secrets=self.resolve_secrets(sc.get("secrets"), f"{field}.secrets"),
                    command=f.command(sc.get("command"), f"{field}.command"),
                    entrypoint=f.command(sc.get("entrypoint"), f"{field}.entrypoint"),
                    essential=f.boolean(sc.get("essential"), f"{field}.essential") is not False,
                    depends_on=self.depends_on(sc.get("depends_on"), f"{field}.depends_on"),
                    healthcheck=healthchecks.container_healthcheck(
                        f, sc.get("healthcheck"), f"{field}.healthcheck"
                    ),
                    mount_points=events.sidecar_mount_points(
                        f, sc.get("mount_points"), f"{field}.mount_points"
                    ),
                )
            )
        return out

    def sidecar_port(self, node: Node | None, field: str) -> int | None:
        # Copilot writes sidecar ports as strings, optionally with a protocol: "2000/udp".
        if isinstance(node, Scalar) and node.kind == "str":
            match = re.fullmatch(r"\s*(\d+)(?:/(tcp|udp))?\s*", node.text)
            if match is None or not 1 <= int(match.group(1)) <= 65535:
                self.f.fail(node, field, 'a port such as "8080" or "8080/tcp"')
                return None
            return int(match.group(1))
        return self.f.port(node, field)
