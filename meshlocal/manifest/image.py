"""A container's image build and start order: `image.build` and `depends_on`.

Read for the main container (`image:`) and for every sidecar. Mixed into
:class:`~meshlocal.manifest.loader.ServiceLoader`, whose state it reads.
"""

from __future__ import annotations

from meshlocal.manifest.merge import is_null
from meshlocal.manifest.model import BuildSpec
from meshlocal.manifest.reader import ManifestReader
from meshlocal.manifest.yaml12 import Map, Node, Scalar

_BUILD_FIELDS = frozenset({"dockerfile", "context", "args", "target", "cache_from"})
DEPENDS_ON_CONDITIONS = frozenset({"start", "complete", "success", "healthy"})


class ImageReader(ManifestReader):
    """`build` and `depends_on` fields, relative to the workspace root."""

    def build(self, node: Node | None, field: str) -> BuildSpec | None:
        f = self.f
        if node is None or is_null(node):
            return None
        if isinstance(node, Scalar):
            # Copilot: a string is the Dockerfile's path; its directory is the context.
            dockerfile = self._path(node.text)
            return BuildSpec(context=dockerfile.parent, dockerfile=dockerfile)
        spec = f.mapping(node, field)
        if spec is None:
            return None
        f.unknown(spec, _BUILD_FIELDS, field)
        dockerfile_text = f.string(spec.get("dockerfile"), f"{field}.dockerfile")
        context_text = f.string(spec.get("context"), f"{field}.context")
        if context_text is not None:
            context = self._path(context_text)
            dockerfile = self._path(dockerfile_text) if dockerfile_text else context / "Dockerfile"
        elif dockerfile_text is not None:
            dockerfile = self._path(dockerfile_text)
            context = dockerfile.parent
        else:
            context = self.ws.root.resolve()
            dockerfile = context / "Dockerfile"
        return BuildSpec(
            context=context,
            dockerfile=dockerfile,
            args=f.str_map(spec.get("args"), f"{field}.args"),
            target=f.string(spec.get("target"), f"{field}.target"),
            cache_from=f.str_list(spec.get("cache_from"), f"{field}.cache_from") or (),
        )

    def depends_on(self, node: Node | None, field: str) -> dict[str, str]:
        # Copilot upper-cases the condition (DependsOn.validate, convertDependsOn).
        deps = {c: cond.lower() for c, cond in self.f.str_map(node, field).items()}
        mapping = node if isinstance(node, Map) else None
        for container, condition in deps.items():
            if condition not in DEPENDS_ON_CONDITIONS:
                loc = mapping.items[container].loc if mapping is not None else None
                self.diag.error(
                    f'{field}.{container}: unknown condition "{condition}"',
                    loc,
                    "use one of " + ", ".join(sorted(DEPENDS_ON_CONDITIONS)),
                )
        return deps
