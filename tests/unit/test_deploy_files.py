"""The shipped systemd unit and gunicorn config, checked by the tools that will read them."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

UNIT = REPO / "deploy" / "inferserver.service"
GUNICORN_CONF = REPO / "deploy" / "gunicorn.conf.py"


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package")
    return binary


def unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /srv/inferserver pointed at this checkout and its venv at the running one (which has gunicorn),
    so verify can find them."""
    text = UNIT.read_text()
    assert "ExecStart=/srv/inferserver/.venv/bin/gunicorn -c /srv/inferserver/deploy/gunicorn.conf.py" in text
    path = tmp_path / "inferserver.service"
    path.write_text(text.replace("/srv/inferserver/.venv", sys.prefix).replace("/srv/inferserver", str(REPO)))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit_for_this_checkout(tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_unit_is_hardened_and_still_reaches_docker(tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit_for_this_checkout(tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for inferserver\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # systemd rates 0-2 "OK", 10 "UNSAFE"
    directives = UNIT.read_text().splitlines()
    for line in (
        "SupplementaryGroups=docker",
        "ReadWritePaths=/var/inferserver",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "EnvironmentFile=-/etc/inferserver/inferserver.env",
    ):
        assert line in directives
    # The socket families the Docker socket and the clients need stay allowed.
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in directives


def gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name in (
        "INFERSERVER_BIND",
        "INFERSERVER_WORKERS",
        "INFERSERVER_WORKER_TIMEOUT",
        "INFERSERVER_GRACEFUL_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


def test_gunicorn_config_defaults_to_one_uvicorn_worker_on_the_nginx_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = gunicorn_settings(monkeypatch)
    assert settings["workers"] == 1
    assert settings["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert settings["bind"] == ["127.0.0.1:8000"]
    upstream = re.search(r"^\s*server (\S+)[^;]*;", (REPO / "deploy" / "nginx" / "inferserver.conf").read_text(), re.M)
    assert upstream and upstream.group(1) == settings["bind"][0]
    assert settings["timeout"] >= 120 and settings["graceful_timeout"] > 10


def test_gunicorn_config_takes_overrides_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = gunicorn_settings(
        monkeypatch, INFERSERVER_WORKERS="3", INFERSERVER_BIND="unix:/run/inferserver/inferserver.sock, 0.0.0.0:8000"
    )
    assert settings["workers"] == 3
    assert settings["bind"] == ["unix:/run/inferserver/inferserver.sock", "0.0.0.0:8000"]


def test_gunicorn_config_names_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match=r"INFERSERVER_WORKERS='many' is not a whole number"):
        gunicorn_settings(monkeypatch, INFERSERVER_WORKERS="many")


def test_the_unit_raises_the_open_file_limit_far_above_1024() -> None:
    """Each log stream holds two file descriptors: 1024 would end at ~500 streams (and reset other clients)."""
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("LimitNOFILE=")]
    assert values == ["65536"]


def test_the_gunicorn_config_runs_the_bounded_protocol() -> None:
    """The header size and time bounds of `inferserver serve` hold under gunicorn too."""
    from types import SimpleNamespace

    from inferserver.serving.loop import LOOP
    from inferserver.serving.protocol import PROTOCOL

    settings = runpy.run_path(str(GUNICORN_CONF))
    worker = SimpleNamespace(config=SimpleNamespace(timeout_graceful_shutdown=0, http="auto", loop="auto"))
    settings["post_worker_init"](worker)
    assert worker.config.http == PROTOCOL
    assert worker.config.loop == LOOP  # asyncio's: uvloop accepts one connection per loop iteration
    assert settings["accesslog"] is None  # one line per request, the application's own


SITE = REPO / "deploy" / "nginx" / "inferserver.conf"


def site_directives(name: str) -> list[str]:
    """The arguments of every uncommented `name` directive in the shipped site."""
    return re.findall(rf"^\s*{name}\s+([^;{{]*);", SITE.read_text(), re.M)


def test_the_upstream_leaves_a_failed_host_alone_for_a_while() -> None:
    servers = site_directives("server")
    assert servers == ["127.0.0.1:8000 max_fails=1 fail_timeout=10s"]


def test_only_idempotent_requests_go_to_another_host_and_never_an_upload() -> None:
    assert site_directives("proxy_next_upstream") == ["error timeout"]  # no non_idempotent: a POST is never replayed
    assert site_directives("proxy_next_upstream_tries") == ["2"]
    # Unbuffered: NGINX keeps no copy of an upload's body, so one that started cannot go to another host.
    assert site_directives("proxy_request_buffering") == ["off"]
