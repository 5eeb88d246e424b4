"""Settings: the old server's names and defaults, its Python settings file, env overrides, clear errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inferserver.config import GpuMode, Settings, SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def _settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.py"
    path.write_text(text)
    return path


# Written like ablinfer's own inferserver/default_settings.py, with the operator's edits.
LEGACY_FILE = """\
import os

MODEL_PATH = "/srv/models" ## Directory to look for model JSON files in
SESSION_PATH = os.path.join("/srv", "sessions")      ## Directory to store sessions in *MUST BE WRITABLE*
CLEANUP_TIMER = 60 * 2                 ## Timer in between running session cleanup, in seconds
CLEANUP_FINISHED = False               ## Cleanup finished inferences?
CLEANUP_FILES = True                   ## Remove cleaned sessions from the disk?
CLEANUP_SECONDS = 24 * 3600            ## Number of seconds before a session is considered inactive
CHECK_INPUT_FILETYPES = False          ## Verify input file types before dispatching
WORKER_THREADS = 1 + 1                 ## Number of simultaneous inferences that can be run
CONVERT_INPUTS = False                 ## Whether or not to try converting inputs
"""


def test_defaults_are_the_old_servers() -> None:
    s = load_settings()
    assert Path("/etc/inferserver/models") == s.MODEL_PATH
    assert Path("/var/inferserver") == s.SESSION_PATH
    assert s.CLEANUP_TIMER == 300
    assert s.CLEANUP_FINISHED is True
    assert s.CLEANUP_FILES is False
    assert s.CLEANUP_SECONDS == 3600
    assert s.CHECK_INPUT_FILETYPES is True
    assert s.WORKER_THREADS == 1
    assert s.CONVERT_INPUTS is True
    assert s.GPUS is GpuMode.AUTO


def test_legacy_python_settings_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, LEGACY_FILE)))
    s = load_settings()
    assert Path("/srv/models") == s.MODEL_PATH
    assert Path("/srv/sessions") == s.SESSION_PATH
    assert s.CLEANUP_TIMER == 120
    assert s.CLEANUP_FINISHED is False
    assert s.CLEANUP_FILES is True
    assert s.CLEANUP_SECONDS == 86400
    assert s.CHECK_INPUT_FILETYPES is False
    assert s.WORKER_THREADS == 2
    assert s.CONVERT_INPUTS is False
    assert s.GPUS is GpuMode.AUTO  # not in the file: the default


def test_the_file_may_set_gpus_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, 'GPUS = "none"\n')))
    assert load_settings().GPUS is GpuMode.NONE


def test_env_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, LEGACY_FILE)))
    monkeypatch.setenv("INFERSERVER_WORKER_THREADS", "5")
    monkeypatch.setenv("INFERSERVER_MODEL_PATH", "/env/models")
    monkeypatch.setenv("INFERSERVER_CLEANUP_FILES", "false")
    monkeypatch.setenv("INFERSERVER_GPUS", "all")
    s = load_settings()
    assert s.WORKER_THREADS == 5
    assert Path("/env/models") == s.MODEL_PATH
    assert s.CLEANUP_FILES is False
    assert s.GPUS is GpuMode.ALL
    assert s.CLEANUP_TIMER == 120  # the file still supplies what the env does not


def test_env_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_CLEANUP_TIMER", "-1")  # -1 disables clean-up, as before
    monkeypatch.setenv("INFERSERVER_CHECK_INPUT_FILETYPES", "0")
    s = load_settings()
    assert s.CLEANUP_TIMER == -1
    assert s.CHECK_INPUT_FILETYPES is False


def test_keyword_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_WORKER_THREADS", "5")
    assert load_settings(WORKER_THREADS=3).WORKER_THREADS == 3


def test_lowercase_and_unknown_names_in_the_file_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "worker_threads = 7          # lowercase: a helper variable, not a setting\n"
        "SECRET_KEY = 'flask-era'    # the old Flask app's own settings\n"
        "DEBUG = True\n"
        "WORKER_THREADS = 3\n"
    )
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, text)))
    s = load_settings()
    assert s.WORKER_THREADS == 3
    assert not hasattr(s, "SECRET_KEY")
    assert not hasattr(s, "DEBUG")


def test_lowercase_env_names_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_worker_threads", "7")
    assert load_settings().WORKER_THREADS == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_THREADS", "abc"),
        ("WORKER_THREADS", "0"),
        ("CLEANUP_TIMER", "0"),
        ("CLEANUP_TIMER", "-5"),
        ("CLEANUP_SECONDS", "-1"),
        ("GPUS", "some"),
        ("CLEANUP_FILES", "perhaps"),
        ("MAX_CONCURRENT_REQUESTS", "0"),
        ("MAX_CONCURRENT_REQUESTS", "many"),
    ],
)
def test_a_wrong_env_value_names_the_setting_and_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"INFERSERVER_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert repr(value) in message


def test_every_wrong_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_WORKER_THREADS", "abc")
    monkeypatch.setenv("INFERSERVER_GPUS", "some")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "WORKER_THREADS" in str(caught.value)
    assert "GPUS" in str(caught.value)


def test_a_wrong_value_in_the_file_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, "WORKER_THREADS = 0\n")))
    with pytest.raises(SettingsError, match=r"WORKER_THREADS=0"):
        load_settings()


def test_the_cleanup_timer_message_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_CLEANUP_TIMER", "0")
    with pytest.raises(SettingsError, match=r"-1 to disable"):
        load_settings()


def test_a_missing_settings_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.py"
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(missing))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(missing) in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_a_directory_as_settings_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(tmp_path))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "shows"),
    [
        ("WORKER_THREADS = 1 / 0\n", "ZeroDivisionError"),
        ("WORKER_THREADS = = 2\n", "SyntaxError"),
        ("import no_such_module_for_inferserver\n", "no_such_module_for_inferserver"),
    ],
)
def test_a_crashing_settings_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, shows: str
) -> None:
    path = _settings_file(tmp_path, text)
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(path))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(path) in str(caught.value)
    assert shows in str(caught.value)


def test_every_old_setting_name_still_exists() -> None:
    assert set(Settings.model_fields) >= {
        "MODEL_PATH",
        "SESSION_PATH",
        "CLEANUP_TIMER",
        "CLEANUP_FINISHED",
        "CLEANUP_FILES",
        "CLEANUP_SECONDS",
        "CHECK_INPUT_FILETYPES",
        "WORKER_THREADS",
        "CONVERT_INPUTS",
        "GPUS",
    }


def _serve(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERSERVER_")}
    env.update(env_extra)
    # A port nothing should be listening on; the process must give up before binding anyway.
    return subprocess.run(
        [sys.executable, "-m", "inferserver", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_a_bad_setting_exits_2_naming_it(tmp_path: Path) -> None:
    done = _serve({"INFERSERVER_WORKER_THREADS": "abc"}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr
    assert "WORKER_THREADS" in done.stderr
    assert "'abc'" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


def test_serve_with_a_broken_settings_file_exits_2_naming_it(tmp_path: Path) -> None:
    path = _settings_file(tmp_path, "WORKER_THREADS = 1 / 0\n")
    done = _serve({"INFERSERVER_SETTINGS": str(path)}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr
    assert str(path) in done.stderr


# -- limits --------------------------------------------------------------------------------------

GiB, MiB = 1 << 30, 1 << 20


def test_limits_have_safe_defaults() -> None:
    s = load_settings()
    assert 16 * GiB == s.MAX_UPLOAD_BYTES
    assert 16 * GiB == s.MAX_OUTPUT_BYTES
    assert 2 * GiB == s.DISK_RESERVE_BYTES
    assert s.RUN_TIMEOUT == 21600
    assert 8 * GiB == s.CONTAINER_MEMORY
    assert s.CONTAINER_CPUS == 0
    assert s.CONTAINER_PIDS == 4096
    assert 2 * GiB == s.CONTAINER_SHM  # nnU-Net needs about 1 GiB; Docker's own default is 64 MiB
    assert 64 * MiB == s.LOG_MAX_BYTES
    assert s.MAX_SESSIONS == 200
    assert s.CONTAINER_NETWORK == "none"
    assert (GiB, 300, 2) == (s.MAX_CONVERT_BYTES, s.CONVERT_TIMEOUT, s.MAX_CONVERSIONS)
    assert s.HEADER_TIMEOUT == 30  # slow clients are cut off, but a slow link still sends a head in time
    assert s.UPLOAD_IDLE_TIMEOUT == 60


def test_sizes_in_env_take_human_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_CONTAINER_MEMORY", "512MiB")
    monkeypatch.setenv("INFERSERVER_CONTAINER_SHM", "1g")
    monkeypatch.setenv("INFERSERVER_MAX_UPLOAD_BYTES", "2GB")
    monkeypatch.setenv("INFERSERVER_MAX_OUTPUT_BYTES", "64MiB")
    monkeypatch.setenv("INFERSERVER_LOG_MAX_BYTES", "1048576")
    monkeypatch.setenv("INFERSERVER_DISK_RESERVE_BYTES", "0")
    monkeypatch.setenv("INFERSERVER_CONTAINER_CPUS", "1.5")
    s = load_settings()
    assert 512 * MiB == s.CONTAINER_MEMORY
    assert GiB == s.CONTAINER_SHM
    assert s.MAX_UPLOAD_BYTES == 2 * 10**9
    assert 64 * MiB == s.MAX_OUTPUT_BYTES
    assert MiB == s.LOG_MAX_BYTES
    assert s.DISK_RESERVE_BYTES == 0
    assert s.CONTAINER_CPUS == 1.5


def test_sizes_in_the_file_take_numbers_or_human_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = 'CONTAINER_MEMORY = 4 * 1024**3\nCONTAINER_SHM = "256m"\nRUN_TIMEOUT = 3600\nMAX_SESSIONS = 10\n'
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, text)))
    s = load_settings()
    assert (4 * GiB, 256 * MiB, 3600, 10) == (s.CONTAINER_MEMORY, s.CONTAINER_SHM, s.RUN_TIMEOUT, s.MAX_SESSIONS)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("CONTAINER_MEMORY", "8 gigs", "is not a size"),
        ("CONTAINER_MEMORY", "1m", "must be at least 6 MiB"),  # Docker refuses less
        ("MAX_UPLOAD_BYTES", "0", "must be at least 1 byte"),
        ("MAX_OUTPUT_BYTES", "0", "must be at least 1 byte"),
        ("MAX_OUTPUT_BYTES", "huge", "is not a size"),
        ("CONTAINER_SHM", "-1", "is not a size"),
        ("LOG_MAX_BYTES", "lots", "is not a size"),
        ("RUN_TIMEOUT", "0", "greater than 0"),
        ("CONTAINER_CPUS", "-1", "greater than or equal to 0"),
        ("CONTAINER_PIDS", "0", "greater than 0"),
        ("MAX_SESSIONS", "many", "valid integer"),
        ("MAX_CONVERT_BYTES", "0", "must be at least 1 byte"),
        ("CONVERT_TIMEOUT", "0", "greater than 0"),
        ("MAX_CONVERSIONS", "0", "greater than or equal to 1"),
        ("HEADER_TIMEOUT", "0", "greater than 0"),
        ("HEADER_TIMEOUT", "soon", "valid number"),
        ("UPLOAD_IDLE_TIMEOUT", "-5", "greater than 0"),
        ("UPLOAD_IDLE_TIMEOUT", "86400", "less than or equal to 3600"),
    ],
)
def test_a_wrong_limit_names_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(f"INFERSERVER_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert f"setting {name}={value!r} is invalid" in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("0,1,2,3", ("0", "1", "2", "3")),
        (" 1 , 3", ("1", "3")),
        ("GPU-4b2c-77,MIG-9a/1/0", ("GPU-4b2c-77", "MIG-9a/1/0")),
    ],
)
def test_gpus_lists_a_pool_of_device_ids(monkeypatch: pytest.MonkeyPatch, value: str, devices: tuple[str, ...]) -> None:
    monkeypatch.setenv("INFERSERVER_GPUS", value)
    s = load_settings()
    assert devices == s.GPUS and s.gpu_pool == devices
    assert s.gpus_per_run == len(devices)  # default: all of them


def test_gpus_from_a_settings_file_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_SETTINGS", str(_settings_file(tmp_path, "GPUS = [0, 1]\nGPUS_PER_RUN = 1\n")))
    s = load_settings()
    assert s.GPUS == ("0", "1") and s.gpus_per_run == 1


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GPUS": "0,0"}, "more than once"),
        ({"GPUS": "0,,1"}, "GPUS='0,,1'"),
        ({"GPUS_PER_RUN": "1"}, "GPUS_PER_RUN=1 needs GPUS to list the device ids"),
        ({"GPUS": "0,1", "GPUS_PER_RUN": "3"}, "GPUS_PER_RUN=3 is more than the 2 GPUs"),
        ({"GPUS": "0,1", "GPUS_PER_RUN": "0"}, "GPUS_PER_RUN='0'"),
    ],
)
def test_a_wrong_gpu_pool_is_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"INFERSERVER_{name}", value)
    with pytest.raises(SettingsError, match=re.escape(says)):
        load_settings()


def test_input_staging_defaults_to_the_archive_api() -> None:
    s = load_settings()
    assert s.INPUT_STAGING == "archive" and s.MOUNT_SOURCE_PATH is None


def test_mount_staging_with_a_source_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_INPUT_STAGING", "mount")
    monkeypatch.setenv("INFERSERVER_MOUNT_SOURCE_PATH", "/srv/inferserver")
    s = load_settings()
    assert s.INPUT_STAGING == "mount" and Path("/srv/inferserver") == s.MOUNT_SOURCE_PATH


def test_an_empty_mount_source_path_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSERVER_MOUNT_SOURCE_PATH", "")
    assert load_settings().MOUNT_SOURCE_PATH is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"INPUT_STAGING": "bind"}, "setting INPUT_STAGING='bind' is invalid: Input should be 'archive' or 'mount'"),
        ({"INPUT_STAGING": "mount", "MOUNT_SOURCE_PATH": "srv/x"}, "setting MOUNT_SOURCE_PATH='srv/x' is invalid"),
        ({"INPUT_STAGING": "mount", "MOUNT_SOURCE_PATH": "srv/x"}, "must be an absolute path"),
        ({"MOUNT_SOURCE_PATH": "/srv/x"}, "MOUNT_SOURCE_PATH='/srv/x' is only used with INPUT_STAGING=mount"),
    ],
)
def test_a_wrong_input_staging_is_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"INFERSERVER_{name}", value)
    with pytest.raises(SettingsError, match=re.escape(says)):
        load_settings()


def test_string_parameter_limit_stays_under_the_exec_limit() -> None:
    assert load_settings().MAX_STRING_PARAM_BYTES == 64 * 1024
    assert load_settings(MAX_STRING_PARAM_BYTES="100KiB").MAX_STRING_PARAM_BYTES == 100 * 1024
    with pytest.raises(
        SettingsError,
        match=r"setting MAX_STRING_PARAM_BYTES='128KiB' is invalid: .*must be at most "
        r"131071 bytes: Linux cannot pass one command argument of 128 KiB or more",
    ):
        load_settings(MAX_STRING_PARAM_BYTES="128KiB")


def test_failed_credentials_limit_defaults_and_bounds() -> None:
    settings = load_settings()
    assert (settings.AUTH_MAX_FAILURES, settings.AUTH_FAILURE_WINDOW) == (10, 60)
    for name in ("AUTH_MAX_FAILURES", "AUTH_FAILURE_WINDOW"):
        with pytest.raises(SettingsError, match=f"setting {name}=0 is invalid"):
            load_settings(**{name: 0})


def test_concurrent_requests_are_limited_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().MAX_CONCURRENT_REQUESTS == 100
    monkeypatch.setenv("INFERSERVER_MAX_CONCURRENT_REQUESTS", "7")
    assert load_settings().MAX_CONCURRENT_REQUESTS == 7
