"""ENGINES: engines as JSON in the environment, a file or the settings file; a wrong entry stops start-up naming
the entry and the field; key files are checked by path, never read into a message."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from inferserver.config import GpuMode, SettingsError, load_settings
from inferserver.scheduling.engines import EnginePool

pytestmark = pytest.mark.usefixtures("clean_env")

SECRET = "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-KEY-BYTES\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca.pem", "cert.pem", "key.pem"):
        path = tmp_path / name
        path.write_text(SECRET if name == "key.pem" else "not a certificate\n")
        files[f"tls_{name.split('.')[0]}"] = str(path)
    return files


def engines_env(monkeypatch: pytest.MonkeyPatch, engines: object) -> None:
    monkeypatch.setenv("INFERSERVER_ENGINES", json.dumps(engines))


def test_unset_is_the_one_engine_of_today_with_gpus_and_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_GPUS", "0,1")
    monkeypatch.setenv("INFERSERVER_WORKER_THREADS", "3")
    settings = load_settings()
    assert settings.ENGINES is None
    assert settings.ENGINE_GRACE == 120
    [engine] = settings.engines
    assert (engine.name, engine.url, engine.pool, engine.runs_at_once) == ("local", "", ("0", "1"), 3)
    pool = EnginePool(settings)
    assert pool.named is False and pool.grace is None  # a lost run fails as before: there is nowhere else to go


def test_engines_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    engines_env(
        monkeypatch,
        [
            {"name": "gpu1", "url": "unix:///run/a.sock", "gpus": [0, 1], "labels": {"gpu": "a100"}},
            {"name": "cpu", "url": "ssh://runner@cpu-host", "gpus": "none", "max_runs": 4},
        ],
    )
    monkeypatch.setenv("INFERSERVER_GPUS_PER_RUN", "2")
    settings = load_settings()
    gpu1, cpu = settings.engines
    assert (gpu1.pool, gpu1.runs_at_once, gpu1.labels, gpu1.docker_url) == (
        ("0", "1"),
        2,
        {"gpu": "a100"},
        "unix:///run/a.sock",
    )
    assert (cpu.gpus, cpu.pool, cpu.runs_at_once) == (GpuMode.NONE, (), 4)
    assert EnginePool(settings).grace == 120


def test_engines_from_a_file_it_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "engines.json"
    path.write_text(json.dumps([{"name": "one", "url": "unix:///x.sock"}]))
    monkeypatch.setenv("INFERSERVER_ENGINES", str(path))
    assert [e.name for e in load_settings().engines] == ["one"]


def test_engines_in_the_python_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.py"
    settings_file.write_text('ENGINES = [{"name": "a", "url": "unix:///a.sock", "gpus": "0,1"}]\nENGINE_GRACE = 7\n')
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(settings_file))
    settings = load_settings()
    assert settings.engines[0].pool == ("0", "1") and settings.ENGINE_GRACE == 7


@pytest.mark.parametrize(
    ("engines", "says"),
    [
        ([{"name": "gpu1", "url": "ftp://x"}], "entry 0 ('gpu1'), field url: must start with one of unix://"),
        ([{"name": "gpu1", "url": "tcp://h:2376"}], "entry 0 ('gpu1'), field the entry: tcp://h:2376 needs tls_ca"),
        ([{"name": "gpu1", "url": "http://h:2375"}], "http:// is plain TCP"),
        (
            [{"name": "a", "url": "unix:///a"}, {"name": "b", "url": "unix:///b", "gpus": "x"}],
            "entry 1 ('b'), field gpus",
        ),
        ([{"name": "a", "url": "unix:///a", "max_runs": 0}], "entry 0 ('a'), field max_runs"),
        ([{"name": "a", "url": "unix:///a", "gpu": 1}], "entry 0 ('a'), field gpu: Extra inputs are not permitted"),
        ([{"name": "bad name", "url": "unix:///a"}], "field name: must be 1-63 letters"),
        ([{"url": "unix:///a"}], "entry 0, field name: Field required"),
        ([{"name": "a", "url": "unix:///a"}, {"name": "a", "url": "unix:///b"}], "names an engine more than once: a"),
        ([], "must be a non-empty list"),
        ([{"name": "a", "url": "ssh://h", "insecure": True}], "insecure: true only applies to tcp://"),
    ],
)
def test_a_wrong_entry_stops_start_up_naming_entry_and_field(
    monkeypatch: pytest.MonkeyPatch, engines: object, says: str
) -> None:
    engines_env(monkeypatch, engines)
    with pytest.raises(SettingsError, match=re.escape(says)) as caught:
        load_settings()
    assert str(caught.value).startswith("setting ENGINES is invalid: ")


def test_gpus_per_run_is_checked_against_the_largest_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    engines_env(monkeypatch, [{"name": "a", "url": "unix:///a", "gpus": "0,1"}])
    monkeypatch.setenv("INFERSERVER_GPUS_PER_RUN", "3")
    with pytest.raises(SettingsError, match="GPUS_PER_RUN=3 is more than the 2 GPUs the largest engine"):
        load_settings()


def test_a_missing_key_file_is_named_by_its_path(monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, str]) -> None:
    missing = str(Path(tls_files["tls_key"]).with_name("gone.pem"))
    engines_env(monkeypatch, [{"name": "gpu2", "url": "tcp://h:2376", **tls_files, "tls_key": missing}])
    with pytest.raises(SettingsError, match=re.escape(f"entry 0 ('gpu2'), field tls_key: file '{missing}'")):
        load_settings()


def test_a_key_file_that_is_no_key_stops_start_up_by_path_never_by_content(
    monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    engines_env(monkeypatch, [{"name": "gpu2", "url": "tcp://h:2376", **tls_files}])
    settings = load_settings()  # the files exist and open: their content is checked when the pool is built
    assert settings.engines[0].docker_url == "https://h:2376"
    with caplog.at_level(logging.DEBUG), pytest.raises(SettingsError) as caught:
        EnginePool(settings)
    message = str(caught.value)
    assert "engine 'gpu2': cannot load its TLS files" in message and tls_files["tls_key"] in message
    assert "TOP-SECRET" not in message and "TOP-SECRET" not in caplog.text


def test_plain_tcp_needs_insecure_and_is_logged_as_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engines_env(monkeypatch, [{"name": "lab", "url": "tcp://10.0.0.2:2375", "insecure": True}])
    settings = load_settings()
    assert settings.engines[0].docker_url == "http://10.0.0.2:2375"
    with caplog.at_level(logging.WARNING):
        EnginePool(settings)
    assert "engine lab (tcp://10.0.0.2:2375) is reached over plain TCP (insecure: true)" in caplog.text
