"""Which engine meshlocal picks (enginehost.py), checked against the docker CLI's rules.

Contexts are written as `docker context create` writes them under $DOCKER_CONFIG
(a fresh tmp_path per test); the last tests let the real CLI write them, when
it is installed. apply_context sets variables in os.environ itself, so every
variable it touches is put back by monkeypatch after each test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from meshlocal.errors import DockerUnavailable
from meshlocal.runtime import enginehost as E
from meshlocal.runtime.enginehost import EngineHost

TOUCHED = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "MESHLOCAL_DOCKER_CONTEXT",
    E.REMOTE_ENV,
    E.ENGINE_SOCKET_ENV,
)


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $DOCKER_CONFIG, and none of the variables apply_context reads or sets."""
    for name in TOUCHED:
        # setenv first so that monkeypatch records the original value and
        # restores it even when apply_context sets the variable afterwards.
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def _ident(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _meta_path(config: Path, name: str) -> Path:
    return config / "contexts" / "meta" / _ident(name) / "meta.json"


def make_context(
    config: Path, name: str, host: str, *, skip_verify: bool = False, tls: bool = False
) -> Path | None:
    """A context as `docker context create NAME --docker host=HOST[,ca=,cert=,key=]` writes it.

    Returns its TLS folder when `tls`."""
    meta = _meta_path(config, name)
    meta.parent.mkdir(parents=True)
    meta.write_text(
        json.dumps(
            {
                "Name": name,
                "Metadata": {},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}},
            }
        )
    )
    if not tls:
        return None
    folder = config / "contexts" / "tls" / _ident(name) / "docker"
    folder.mkdir(parents=True)
    for pem in ("ca.pem", "cert.pem", "key.pem"):
        (folder / pem).write_text("-----BEGIN CERTIFICATE-----\n")
    return folder


def write_config(config: Path, current: object) -> None:
    (config / "config.json").write_text(json.dumps({"auths": {}, "currentContext": current}))


# -- precedence ------------------------------------------------------------------------


def test_nothing_configured_is_the_local_unix_socket(config: Path) -> None:
    host = E.apply_context(None)
    assert host == EngineHost(E.DEFAULT_HOST, None)
    assert not host.remote
    assert "DOCKER_HOST" not in os.environ


def test_explicit_context_beats_docker_host(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_context(config, "far", "tcp://10.9.8.7:2375")
    monkeypatch.setenv("DOCKER_HOST", "tcp://near:2375")
    monkeypatch.setenv("DOCKER_CONTEXT", "other")
    host = E.apply_context("far")
    assert host == EngineHost("tcp://10.9.8.7:2375", "far")
    assert os.environ["DOCKER_HOST"] == "tcp://10.9.8.7:2375"
    assert os.environ["MESHLOCAL_DOCKER_CONTEXT"] == "far"
    assert E.current() == host  # what every later Engine.from_env sees


def test_docker_host_beats_docker_context_and_current_context(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_context(config, "envctx", "tcp://10.0.0.1:2375")
    make_context(config, "cfgctx", "tcp://10.0.0.2:2375")
    write_config(config, "cfgctx")
    monkeypatch.setenv("DOCKER_CONTEXT", "envctx")
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@box")
    host = E.apply_context(None)
    assert host == EngineHost("ssh://me@box", None)
    assert os.environ["DOCKER_HOST"] == "ssh://me@box"
    assert "MESHLOCAL_DOCKER_CONTEXT" not in os.environ


def test_docker_host_wins_even_over_a_missing_context(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI never opens DOCKER_CONTEXT's context when DOCKER_HOST is set."""
    monkeypatch.setenv("DOCKER_CONTEXT", "nowhere")
    monkeypatch.setenv("DOCKER_HOST", "tcp://h:2375")
    assert E.apply_context(None).url == "tcp://h:2375"


def test_docker_context_beats_current_context(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_context(config, "envctx", "tcp://10.0.0.1:2375")
    make_context(config, "cfgctx", "tcp://10.0.0.2:2375")
    write_config(config, "cfgctx")
    monkeypatch.setenv("DOCKER_CONTEXT", "envctx")
    assert E.apply_context(None) == EngineHost("tcp://10.0.0.1:2375", "envctx")


def test_current_context_of_config_json(config: Path) -> None:
    make_context(config, "cfgctx", "ssh://deploy@build-box")
    write_config(config, "cfgctx")
    host = E.apply_context(None)
    assert host == EngineHost("ssh://deploy@build-box", "cfgctx")
    assert host.remote and host.ssh
    assert os.environ["DOCKER_HOST"] == "ssh://deploy@build-box"


def test_docker_config_defaults_to_home_dot_docker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    home_config = tmp_path / ".docker"
    home_config.mkdir()
    make_context(home_config, "homectx", "tcp://10.0.0.3:2375")
    write_config(home_config, "homectx")
    assert E.apply_context(None) == EngineHost("tcp://10.0.0.3:2375", "homectx")


def test_explicit_default_context_clears_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://elsewhere:2375")
    host = E.apply_context("default")
    assert host == EngineHost(E.DEFAULT_HOST, "default")
    assert "DOCKER_HOST" not in os.environ
    assert not host.remote


@pytest.mark.parametrize("where", ["DOCKER_CONTEXT", "config.json"])
def test_default_as_the_current_context_is_the_local_socket(
    config: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    make_context(config, "cfgctx", "tcp://10.0.0.2:2375")
    if where == "DOCKER_CONTEXT":
        write_config(config, "cfgctx")
        monkeypatch.setenv("DOCKER_CONTEXT", "default")
    else:
        write_config(config, "default")
    assert E.apply_context(None) == EngineHost(E.DEFAULT_HOST, None)
    assert "DOCKER_HOST" not in os.environ


@pytest.mark.parametrize("text", ["{not json", "[]", '{"currentContext": null}', ""])
def test_config_json_without_a_usable_current_context_is_ignored(config: Path, text: str) -> None:
    (config / "config.json").write_text(text)
    assert E.apply_context(None) == EngineHost(E.DEFAULT_HOST, None)


# -- TLS -------------------------------------------------------------------------------


def test_tls_folder_sets_cert_path_and_verify(config: Path) -> None:
    folder = make_context(config, "secure", "tcp://10.0.0.5:2376", tls=True)
    host = E.apply_context("secure")
    assert host.url == "tcp://10.0.0.5:2376"
    assert os.environ["DOCKER_CERT_PATH"] == str(folder)
    assert os.environ["DOCKER_TLS_VERIFY"] == "1"


def test_tls_folder_with_skip_verify_turns_verification_off(config: Path) -> None:
    folder = make_context(config, "lax", "tcp://10.0.0.6:2376", tls=True, skip_verify=True)
    assert folder is not None
    E.apply_context("lax")
    assert os.environ["DOCKER_CERT_PATH"] == str(folder)
    assert os.environ["DOCKER_TLS_VERIFY"] == ""
    # docker-py's reading of that pair: TLS with the folder's certificates, unverified.
    kwargs = docker.utils.kwargs_from_env()
    assert kwargs["base_url"] == "tcp://10.0.0.6:2376"
    assert kwargs["tls"].verify is False
    assert kwargs["tls"].cert == (str(folder / "cert.pem"), str(folder / "key.pem"))


def test_no_tls_folder_sets_no_tls_variables(config: Path) -> None:
    make_context(config, "plain", "tcp://10.0.0.7:2375")
    # A TLS folder of another context must not be picked up.
    make_context(config, "secure", "tcp://10.0.0.5:2376", tls=True)
    E.apply_context("plain")
    assert "DOCKER_CERT_PATH" not in os.environ
    assert "DOCKER_TLS_VERIFY" not in os.environ


def test_context_without_tls_drops_tls_variables_of_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_context(config, "plain", "tcp://10.0.0.7:2375")
    monkeypatch.setenv("DOCKER_HOST", "tcp://old:2376")
    monkeypatch.setenv("DOCKER_CERT_PATH", "/old/certs")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    E.apply_context("plain")
    assert "DOCKER_CERT_PATH" not in os.environ
    assert "DOCKER_TLS_VERIFY" not in os.environ


# -- broken or missing contexts ----------------------------------------------------------


def test_unknown_context_says_how_to_list_and_create_one(config: Path) -> None:
    make_context(config, "known", "tcp://10.0.0.1:2375")
    with pytest.raises(DockerUnavailable) as info:
        E.apply_context("nope")
    assert "no Docker context named nope" in info.value.message
    assert info.value.hint is not None
    assert "docker context ls" in info.value.hint
    assert "docker context create nope" in info.value.hint
    assert "DOCKER_HOST" not in os.environ
    assert "MESHLOCAL_DOCKER_CONTEXT" not in os.environ


def test_unknown_current_context_of_config_json_is_an_error_too(config: Path) -> None:
    write_config(config, "gone")
    with pytest.raises(DockerUnavailable, match="no Docker context named gone"):
        E.apply_context(None)


@pytest.mark.parametrize(
    "content",
    [b"{garbage", b'{"Name": "broken", "Endpoints": {', b"\xff\xfe\x00not utf-8", b""],
    ids=["garbage", "truncated", "not-utf8", "empty"],
)
def test_unreadable_meta_json_is_a_clear_error(config: Path, content: bytes) -> None:
    meta = _meta_path(config, "broken")
    meta.parent.mkdir(parents=True)
    meta.write_bytes(content)
    with pytest.raises(DockerUnavailable) as info:
        E.apply_context("broken")
    assert "the Docker context broken can't be read" in info.value.message
    assert str(meta) in info.value.message
    assert "DOCKER_HOST" not in os.environ


def test_meta_json_that_is_a_folder_is_a_clear_error(config: Path) -> None:
    meta = _meta_path(config, "odd")
    meta.mkdir(parents=True)
    with pytest.raises(DockerUnavailable, match="the Docker context odd can't be read"):
        E.apply_context("odd")


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"Name": "bare"},
        {"Name": "bare", "Endpoints": {}},
        {"Name": "bare", "Endpoints": {"docker": {"Host": ""}}},
        {"Name": "bare", "Endpoints": {"docker": {"SkipTLSVerify": False}}},
    ],
)
def test_context_without_a_docker_host_is_a_clear_error(config: Path, data: object) -> None:
    meta = _meta_path(config, "bare")
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps(data))
    with pytest.raises(DockerUnavailable) as info:
        E.apply_context("bare")
    assert "the Docker context bare has no docker endpoint" in info.value.message
    assert info.value.hint is not None and "docker context create bare" in info.value.hint


@pytest.mark.parametrize(
    "data",
    [{"Endpoints": ["docker"]}, {"Endpoints": {"docker": "tcp://10.0.0.1:2375"}}],
    ids=["endpoints-list", "docker-string"],
)
def test_meta_json_of_another_shape_is_a_clear_error(config: Path, data: object) -> None:
    meta = _meta_path(config, "shape")
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps(data))
    with pytest.raises(DockerUnavailable, match="the Docker context shape"):
        E.apply_context("shape")


# -- local or remote ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "remote", "ssh"),
    [
        ("unix:///var/run/docker.sock", "unix", False, False),
        ("unix:///run/user/1000/docker.sock", "unix", False, False),
        ("/var/run/docker.sock", "unix", False, False),
        ("npipe:////./pipe/docker_engine", "npipe", False, False),
        ("tcp://127.0.0.1:2375", "tcp", True, False),
        ("tcp://10.0.0.1:2376", "tcp", True, False),
        ("ssh://me@box", "ssh", True, True),
        ("ssh://me@box:2222", "ssh", True, True),
    ],
)
def test_remote_by_scheme(url: str, scheme: str, remote: bool, ssh: bool) -> None:
    host = EngineHost(url)
    assert (host.scheme, host.remote, host.ssh) == (scheme, remote, ssh)
    assert host.describe() == f"{url} ({'remote' if remote else 'local'})"


def test_remote_env_makes_a_unix_socket_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    host = EngineHost("unix:///var/run/docker.sock", "mine")
    monkeypatch.setenv(E.REMOTE_ENV, "0")
    assert not host.remote
    monkeypatch.setenv(E.REMOTE_ENV, "1")
    assert host.remote
    assert host.describe() == "unix:///var/run/docker.sock (context mine, remote)"


def test_current_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert E.current() == EngineHost(E.DEFAULT_HOST, None)
    monkeypatch.setenv("DOCKER_HOST", "ssh://a@b")
    monkeypatch.setenv("MESHLOCAL_DOCKER_CONTEXT", "ctx")
    assert E.current() == EngineHost("ssh://a@b", "ctx")


def test_require_local_passes_a_local_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    E.require_local(EngineHost("unix:///var/run/docker.sock"), "host mode binds here", "hint")
    monkeypatch.setenv(E.REMOTE_ENV, "0")
    E.require_local(EngineHost("npipe:////./pipe/docker_engine"), "host mode", "hint")


@pytest.mark.parametrize("url", ["tcp://10.0.0.1:2375", "ssh://me@box"])
def test_require_local_refuses_a_remote_engine(url: str) -> None:
    with pytest.raises(DockerUnavailable) as info:
        E.require_local(EngineHost(url), "host mode binds this machine's ports", "use bridge")
    assert (
        info.value.message
        == f"host mode binds this machine's ports, and the engine at {url} is remote"
    )
    assert info.value.hint == "use bridge"


def test_require_local_refuses_a_unix_socket_forced_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(E.REMOTE_ENV, "1")
    with pytest.raises(DockerUnavailable, match="is remote"):
        E.require_local(EngineHost(E.DEFAULT_HOST), "open needs a browser here", "forward")


def test_engine_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    assert E.engine_socket() == "/var/run/docker.sock"
    monkeypatch.setenv(E.ENGINE_SOCKET_ENV, "/run/user/1000/docker.sock")
    assert E.engine_socket() == "/run/user/1000/docker.sock"


# -- what the real docker CLI writes -----------------------------------------------------

needs_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")


def _cli(config: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in TOUCHED}
    env["DOCKER_CONFIG"] = str(config)
    subprocess.run(["docker", *args], env=env, check=True, capture_output=True, timeout=30)


@needs_cli
def test_reads_contexts_the_docker_cli_wrote(config: Path) -> None:
    _cli(config, "context", "create", "cli-tcp", "--docker", "host=tcp://10.20.30.40:2375")
    _cli(config, "context", "create", "cli-ssh", "--docker", "host=ssh://deploy@build-box")
    _cli(config, "context", "use", "cli-ssh")
    assert E.apply_context("cli-tcp") == EngineHost("tcp://10.20.30.40:2375", "cli-tcp")
    assert "DOCKER_CERT_PATH" not in os.environ
    os.environ.pop("DOCKER_HOST")
    assert E.apply_context(None) == EngineHost("ssh://deploy@build-box", "cli-ssh")


@needs_cli
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make certificates")
def test_reads_a_tls_context_the_docker_cli_wrote(config: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=meshlocal-test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    opts = f"host=tcp://10.20.30.41:2376,ca={cert},cert={cert},key={key}"
    _cli(config, "context", "create", "cli-tls", "--docker", opts)
    assert E.apply_context("cli-tls") == EngineHost("tcp://10.20.30.41:2376", "cli-tls")
    folder = Path(os.environ["DOCKER_CERT_PATH"])
    assert os.environ["DOCKER_TLS_VERIFY"] == "1"
    assert (folder / "ca.pem").read_bytes() == cert.read_bytes()
    assert (folder / "key.pem").read_bytes() == key.read_bytes()
    # ... and docker-py, which Engine.from_env uses, finds the certificates there.
    tls = docker.utils.kwargs_from_env()["tls"]
    assert tls.verify is True
    assert tls.ca_cert == str(folder / "ca.pem")
    assert tls.cert == (str(folder / "cert.pem"), str(folder / "key.pem"))


def test_an_ssh_engine_without_paramiko_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.errors

    from meshlocal.runtime.engineerrors import map_docker_error

    monkeypatch.setenv("DOCKER_HOST", "ssh://me@big-box")
    exc = docker.errors.DockerException("Install paramiko package to enable ssh:// support")
    mapped = map_docker_error(exc)
    assert isinstance(mapped, DockerUnavailable)
    assert "ssh://me@big-box" in mapped.message and "paramiko" in mapped.message
    assert mapped.hint is not None and "meshlocal[ssh]" in mapped.hint


def test_an_unreachable_remote_engine_gets_a_remote_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests.exceptions

    from meshlocal.runtime.engineerrors import map_docker_error

    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    mapped = map_docker_error(requests.exceptions.ConnectionError("refused"))
    assert isinstance(mapped, DockerUnavailable)
    assert mapped.hint is not None and "docker -H tcp://10.0.0.9:2375 info" in mapped.hint
