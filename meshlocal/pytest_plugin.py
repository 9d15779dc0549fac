"""pytest plugin (entry point `pytest11: meshlocal`): fixtures for a live mesh.

Fixtures, in the style of pytest-docker / testcontainers:

- `meshlocal_workspace` (session): a directory inside the Copilot workspace;
- `meshlocal_env` (session): the environment name, or None for the only one;
- `mesh`: a running `meshlocal.testing.Mesh`, session-scoped unless
  `meshlocal_scope` says otherwise; torn down even when tests fail or the
  run is interrupted;
- `meshlocal_factory` (session): start further meshes (another workspace
  or environment), each downed at the end of the session.

The handle injects faults for a `with` block: `with mesh.fault("api", abort=503) as f:`
(meshlocal.testfaults).

Configuration: command-line options win over ini options (pytest.ini,
pyproject's [tool.pytest.ini_options], ...); see docs/pytest.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    # Imported lazily at run time: every pytest run of a project that merely
    # has meshlocal installed loads this plugin, and the handle pulls in
    # docker and aiohttp.
    from meshlocal.testing import Mesh, MeshFactory, Mode

SCOPES = ("session", "package", "module", "class", "function")
MODES: tuple[Mode, ...] = ("container", "host")
DEFAULT_TIMEOUT = 180.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshlocal", "meshlocal: a live Copilot mesh for integration tests")
    group.addoption(
        "--meshlocal-workspace",
        metavar="DIR",
        default=None,
        help="directory inside the Copilot workspace (default: the current directory)",
    )
    group.addoption("--meshlocal-env", metavar="NAME", default=None, help="environment to run")
    group.addoption(
        "--meshlocal-scope",
        choices=SCOPES,
        default=None,
        help="scope of the `mesh` fixture (default: session)",
    )
    group.addoption(
        "--meshlocal-dataplane",
        choices=MODES,
        default=None,
        help="run DNS and proxy in a container (default) or on the host gateway (root)",
    )
    parser.addini(
        "meshlocal_workspace",
        "directory inside the Copilot workspace, relative to the ini file",
        default=None,
    )
    parser.addini("meshlocal_env", "environment the `mesh` fixture runs", default=None)
    parser.addini("meshlocal_scope", "scope of the `mesh` fixture (session)", default="session")
    parser.addini("meshlocal_dataplane", "container (default) or host", default="container")
    parser.addini(
        "meshlocal_timeout",
        "seconds `up` may take until every replica is healthy",
        default=str(DEFAULT_TIMEOUT),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "meshlocal: the test runs against a live meshlocal mesh "
        "(set on every test that uses the `mesh` fixture)",
    )
    scope = _option(config, "scope")
    if scope not in SCOPES:
        raise pytest.UsageError(
            f"meshlocal_scope = {scope!r} is not a pytest scope; use one of {', '.join(SCOPES)}"
        )
    mode = _option(config, "dataplane")
    if mode not in MODES:
        raise pytest.UsageError(f"meshlocal_dataplane = {mode!r}; use container or host")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the mesh get the marker, so `-m "not meshlocal"` skips them."""
    for item in items:
        if _uses_our_mesh(item) and item.get_closest_marker("meshlocal") is None:
            item.add_marker(pytest.mark.meshlocal)


def _uses_our_mesh(item: pytest.Item) -> bool:
    """True when `mesh` resolves to this plugin's fixture, not a project's own `mesh`."""
    if "mesh" not in getattr(item, "fixturenames", ()):
        return False
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}).get("mesh") if info is not None else None
    if not defs:
        return False
    # The last definition is the one the test gets (the closest override).
    func = getattr(defs[-1], "func", None)
    return getattr(func, "__module__", None) == __name__ and getattr(func, "__name__", "") == "mesh"


# -- configuration ------------------------------------------------------------


def _option(config: pytest.Config, name: str) -> str | None:
    """`--meshlocal-<name>` if given, else the ini option `meshlocal_<name>`."""
    value = config.getoption(f"meshlocal_{name}", default=None)
    if value is not None:
        return str(value)
    ini = config.getini(f"meshlocal_{name}")
    return str(ini) if ini not in (None, "", []) else None


def mesh_scope(fixture_name: str, config: pytest.Config) -> Any:
    """The `mesh` fixture's scope (a pytest dynamic-scope callable)."""
    return _option(config, "scope") or "session"


def workspace_from(config: pytest.Config) -> Path:
    cli = config.getoption("meshlocal_workspace", default=None)
    if cli:
        return (config.invocation_params.dir / str(cli)).resolve()
    ini = config.getini("meshlocal_workspace")
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return (base / str(ini)).resolve()
    return config.invocation_params.dir


def _timeout(config: pytest.Config) -> float:
    raw = _option(config, "timeout") or str(DEFAULT_TIMEOUT)
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"meshlocal_timeout = {raw!r} is not a number") from None


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


def start_mesh(
    config: pytest.Config, workspace: str | os.PathLike[str], env: str | None, **kwargs: Any
) -> Mesh:
    """Start a mesh for a test session; a MeshlocalError fails without a traceback."""
    from meshlocal.errors import MeshlocalError
    from meshlocal.testing import Mesh

    kwargs.setdefault("mode", cast("Mode", _option(config, "dataplane") or "container"))
    kwargs.setdefault("timeout", _timeout(config))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    where = f" [{worker}]" if worker else ""
    if config.get_verbosity() > 0:
        # A first run builds images for minutes: with -v, say what it is doing.
        kwargs.setdefault("progress", lambda line: _say(config, f"meshlocal{where}: {line}"))
    started = time.monotonic()
    try:
        handle = Mesh(workspace, env, **kwargs)
        handle.up()
    except MeshlocalError as exc:
        pytest.fail(f"meshlocal could not start the mesh:\n{exc.render()}", pytrace=False)
    _say(
        config,
        f"meshlocal{where}: {handle.project}/{handle.env} up in {time.monotonic() - started:.1f}s",
    )
    return handle


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def meshlocal_workspace(pytestconfig: pytest.Config) -> Path:
    """Directory inside the Copilot workspace. Override it in a conftest.py to pin it."""
    return workspace_from(pytestconfig)


@pytest.fixture(scope="session")
def meshlocal_env(pytestconfig: pytest.Config) -> str | None:
    """Environment to run; None: the workspace's only environment."""
    return _option(pytestconfig, "env")


@pytest.fixture(scope=mesh_scope)
def mesh(
    request: pytest.FixtureRequest, meshlocal_workspace: Path, meshlocal_env: str | None
) -> Iterator[Mesh]:
    """A running mesh of `meshlocal_workspace` / `meshlocal_env`; downed afterwards."""
    handle = start_mesh(request.config, meshlocal_workspace, meshlocal_env)
    try:
        yield handle
    finally:
        handle.down()


@pytest.fixture(scope="session")
def meshlocal_factory(pytestconfig: pytest.Config) -> Iterator[MeshFactory]:
    """`meshlocal_factory(workspace, env)` starts another mesh, downed at session end."""
    started: list[Mesh] = []

    def factory(workspace: str | os.PathLike[str], env: str | None = None, **kwargs: Any) -> Mesh:
        handle = start_mesh(pytestconfig, workspace, env, **kwargs)
        started.append(handle)
        return handle

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for handle in reversed(started):
            try:
                handle.down()
            except Exception as exc:  # down the others before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


# -- failure reports --------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used the mesh gets a "meshlocal" section: replicas and health."""
    report = yield
    if report.failed and call.when == "call":
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        handle = funcargs.get("mesh")
        if handle is not None and _is_mesh(handle) and handle.running:
            report.sections.append(("meshlocal", describe(handle)))
    return report


def _is_mesh(value: object) -> bool:
    from meshlocal.testing import Mesh

    return isinstance(value, Mesh)


def describe(handle: Mesh) -> str:
    """Replicas and their health, and the active faults, like `meshlocal ps`, for failure
    reports."""
    try:
        state = handle.state()
    except Exception as exc:  # the report must not fail because the mesh did
        return f"{handle.project}: state unavailable: {exc}"
    lines = [f"project {handle.project}, env {handle.env}, data plane {state.get('mode')}"]
    with contextlib.suppress(Exception):  # a URL to look at while the mesh still runs
        lines.append(f"  mesh page: {handle.deployment.dataplane().admin_url}/")
    for name, svc in sorted(state.get("services", {}).items()):
        reps = ", ".join(
            f"{r['name']}={r['health']}{'' if r['in_rotation'] else '(out)'}"
            for r in svc.get("replicas", [])
        )
        lines.append(f"  {name} desired {svc.get('desired')}: {reps or 'no replicas'}")
    for crash in state.get("crashes", []):
        lines.append(f"  crash loop: {crash['service']}-{crash['index']} exit {crash['exit_code']}")
    for fault in state.get("faults", []):
        # A fault a test left (or a declared one) explains many a failure.
        lines.append(
            f"  fault {fault['id']}: {fault.get('description', fault['kind'])} on "
            f"{fault['service']}{' from ' + fault['source'] if fault.get('source') else ''}, "
            f"hit {fault.get('hits', 0)} of {fault.get('seen', 0)}"
        )
    return "\n".join(lines)


__all__ = [
    "MeshFactory",
    "describe",
    "mesh",
    "mesh_scope",
    "meshlocal_env",
    "meshlocal_factory",
    "meshlocal_workspace",
    "start_mesh",
    "workspace_from",
]
