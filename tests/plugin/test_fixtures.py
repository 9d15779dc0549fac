"""Plugin configuration without Docker: options, scope, marker, failures, waits."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from meshlocal.errors import RuntimeFailure
from meshlocal.testing import WaitTimeout, session_suffix, wait_until

# hypothesis' plugin costs seconds per inner session; these runs need neither it
# nor pytest-asyncio (which warns about its unset ini options).
FAST = ("-p", "no:hypothesispytest", "-p", "no:asyncio", "-p", "no:cacheprovider")

PRINT_FIXTURES = """
def test_show(meshlocal_workspace, meshlocal_env):
    print(f"WS={meshlocal_workspace} ENV={meshlocal_env}")
"""


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*FAST, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.meshlocal:*live meshlocal mesh*"])


def test_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*FAST, "--help")
    result.stdout.fnmatch_lines(
        [
            "*--meshlocal-workspace=DIR*",
            "*--meshlocal-scope=*",
            "*meshlocal_timeout*",
        ]
    )


def test_workspace_defaults_to_the_invocation_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PRINT_FIXTURES)
    result = pytester.runpytest(*FAST, "-s")
    result.stdout.fnmatch_lines([f"*WS={pytester.path} ENV=None"])


def test_ini_options_are_relative_to_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmeshlocal_workspace = ws/inner\nmeshlocal_env = staging\n")
    sub = pytester.mkdir("sub")
    pytester.makepyfile(**{"sub/test_x": PRINT_FIXTURES})
    result = pytester.runpytest(*FAST, "-s", str(sub))
    result.stdout.fnmatch_lines([f"*WS={pytester.path / 'ws' / 'inner'} ENV=staging"])


def test_command_line_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmeshlocal_workspace = from-ini\nmeshlocal_env = staging\n")
    pytester.makepyfile(PRINT_FIXTURES)
    result = pytester.runpytest(*FAST, "-s", "--meshlocal-workspace=cli", "--meshlocal-env=test")
    result.stdout.fnmatch_lines([f"*WS={pytester.path / 'cli'} ENV=test"])


def test_conftest_override_beats_options(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def meshlocal_env():
            return "from-conftest"
        """
    )
    pytester.makepyfile(PRINT_FIXTURES)
    result = pytester.runpytest(*FAST, "-s", "--meshlocal-env=cli")
    result.stdout.fnmatch_lines(["*ENV=from-conftest"])


@pytest.mark.parametrize(
    ("args", "ini", "letter"),
    [
        ((), "", "S"),
        ((), "meshlocal_scope = module", "M"),
        (("--meshlocal-scope=function",), "meshlocal_scope = module", "F"),
    ],
)
def test_mesh_scope_is_configurable(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str, letter: str
) -> None:
    """--setup-plan shows the scope each fixture would be set up in, without running it."""
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_a(mesh):\n    pass\n")
    result = pytester.runpytest(*FAST, "--setup-plan", *args)
    result.stdout.fnmatch_lines([f"*SETUP    {letter} mesh*"])


def test_bad_scope_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmeshlocal_scope = galaxy\n")
    result = pytester.runpytest(
        *FAST,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*meshlocal_scope = 'galaxy' is not a pytest scope*"])


def test_tests_using_mesh_are_marked(pytester: pytest.Pytester) -> None:
    """`-m "not meshlocal"` deselects them; the mesh is then never started."""
    pytester.makepyfile(
        """
        def test_needs_mesh(mesh):
            raise AssertionError("must be deselected")

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest(*FAST, "-m", "not meshlocal")
    result.assert_outcomes(passed=1, deselected=1)


def test_a_projects_own_mesh_fixture_is_not_marked(pytester: pytest.Pytester) -> None:
    """A conftest `mesh` of the project's own shadows the plugin's: no marker then."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def mesh():
            return "mine"
        """
    )
    pytester.makepyfile("def test_own(mesh):\n    assert mesh == 'mine'\n")
    result = pytester.runpytest(*FAST, "-m", "not meshlocal")
    result.assert_outcomes(passed=1)


def test_no_workspace_errors_without_a_traceback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(mesh):\n    pass\n")
    result = pytester.runpytest(
        *FAST,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*meshlocal could not start the mesh:*", "*error: *copilot*"])
    result.stdout.no_fnmatch_line("*Traceback*")


# -- pure helpers ---------------------------------------------------------------


def test_wait_until_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5, interval=0.01) == "done"


def test_wait_until_retries_assertions_then_times_out_with_the_last() -> None:
    calls = itertools.count(1)

    def check() -> bool:
        raise AssertionError(f"attempt {next(calls)}")

    with pytest.raises(WaitTimeout) as info:
        wait_until(check, timeout=0.2, interval=0.01, message="the impossible")
    assert isinstance(info.value, AssertionError)  # pytest reports a failure
    assert "waiting for the impossible" in str(info.value)
    assert isinstance(info.value.__cause__, AssertionError)
    assert "attempt" in str(info.value.__cause__)


def test_wait_until_lets_unexpected_errors_through() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_until(broken, timeout=1)


def test_wait_until_treats_meshlocal_errors_as_not_yet() -> None:
    attempts = itertools.count()

    def flaky() -> int:
        n = next(attempts)
        if n < 2:
            raise RuntimeFailure("not yet")
        return n

    assert wait_until(flaky, timeout=5, interval=0.01) == 2


def test_suffixes_are_unique_and_name_the_process() -> None:
    import os

    a, b = session_suffix(), session_suffix()
    assert a != b
    assert f"-{os.getpid()}-" in a
    assert Path(a).name == a  # no separators: safe inside Docker names


def test_sigterm_becomes_keyboard_interrupt_only_while_a_mesh_is_up() -> None:
    import signal

    from meshlocal import testing

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("something else handles SIGTERM in this process")
    testing._install_hooks()
    try:
        assert signal.getsignal(signal.SIGTERM) is testing._on_sigterm
        with pytest.raises(KeyboardInterrupt):
            testing._on_sigterm(signal.SIGTERM, None)
    finally:
        testing._release_hooks()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
