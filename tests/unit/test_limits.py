"""A spec's `inferserver` section: checked by Pydantic, held within the server's ceilings, invisible to ablinfer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from ablinfer.model import load_model

from inferserver.config import load_settings
from inferserver.runner.jobs import RunLimits
from inferserver.scheduling.runlimits import limits_for
from inferserver.specs.directory import load_model_directory
from inferserver.specs.errors import SpecError
from inferserver.specs.model import ModelSpec

from ..conftest import TEST_MODELS

GiB, MiB = 1 << 30, 1 << 20
pytestmark = pytest.mark.usefixtures("clean_env")


def spec_with(section: Any) -> dict[str, Any]:
    raw = json.loads((TEST_MODELS / "sleep.json").read_text())
    raw["inferserver"] = section
    return raw


def test_without_a_section_a_run_gets_the_settings() -> None:
    settings = load_settings(CONTAINER_CPUS=2, RUN_TIMEOUT=60, LOG_MAX_BYTES="1m")
    spec = ModelSpec.from_raw(json.loads((TEST_MODELS / "sleep.json").read_text()))
    assert spec.inferserver is None
    assert limits_for(settings, spec) == RunLimits(
        memory=8 * GiB,
        cpus=2.0,
        pids=4096,
        shm_size=2 * GiB,
        timeout=60,
        log_bytes=MiB,
        output_bytes=16 * GiB,
        disk_reserve=2 * GiB,
    )


def test_a_section_lowers_each_limit_it_names() -> None:
    spec = ModelSpec.from_raw(spec_with({"memory": "16MiB", "cpus": 0.5, "pids": 64, "shm_size": "1g", "timeout": 2}))
    assert limits_for(load_settings(CONTAINER_CPUS=1), spec) == RunLimits(
        memory=16 * MiB,
        cpus=0.5,
        pids=64,
        shm_size=GiB,
        timeout=2,
        log_bytes=64 * MiB,
        output_bytes=16 * GiB,
        disk_reserve=2 * GiB,
    )
    partial = ModelSpec.from_raw(spec_with({"shm_size": 1073741824}))
    limits = limits_for(load_settings(), partial)
    assert (limits.shm_size, limits.memory, limits.timeout) == (GiB, 8 * GiB, 21600)


def test_any_cpus_when_the_server_sets_no_cpu_limit() -> None:
    spec = ModelSpec.from_raw(spec_with({"cpus": 64}))
    assert limits_for(load_settings(CONTAINER_CPUS=0), spec).cpus == 64


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ({"memory": "16g"}, "inferserver/memory: 16 GiB is above the server's limit of 8 GiB (CONTAINER_MEMORY)"),
        ({"shm_size": "3GiB"}, "inferserver/shm_size: 3 GiB is above the server's limit of 2 GiB (CONTAINER_SHM)"),
        ({"timeout": 21601}, "inferserver/timeout: 21601 s is above the server's limit of 21600 s (RUN_TIMEOUT)"),
        ({"pids": 5000}, "inferserver/pids: 5000 is above the server's limit of 4096 (CONTAINER_PIDS)"),
        ({"cpus": 3}, "inferserver/cpus: 3 is above the server's limit of 2 (CONTAINER_CPUS)"),
    ],
)
def test_asking_above_a_ceiling_names_the_field_and_the_setting(section: dict[str, Any], reason: str) -> None:
    spec = ModelSpec.from_raw(spec_with(section))
    with pytest.raises(SpecError) as caught:
        limits_for(load_settings(CONTAINER_CPUS=2), spec)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ({"memroy": "1g"}, "inferserver/memroy: Extra inputs are not permitted"),
        ({"memory": "lots"}, "inferserver/memory: 'lots' is not a size"),
        ({"memory": "1m"}, "inferserver/memory: must be at least 6 MiB"),
        ({"shm_size": 0}, "inferserver/shm_size: must be at least 1 byte"),
        ({"timeout": 0}, "inferserver/timeout: Input should be greater than 0"),
        ({"timeout": "2"}, "inferserver/timeout: Input should be a valid integer"),
        ({"cpus": True}, "inferserver/cpus"),
        ({"pids": -1}, "inferserver/pids: Input should be greater than 0"),
        ("8g", "inferserver: Input should be a valid dictionary or instance of ModelLimits"),
    ],
)
def test_a_malformed_section_names_the_field(section: Any, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        ModelSpec.from_raw(spec_with(section))
    assert reason in str(caught.value)


def test_the_wire_spec_still_equals_ablinfers_load_model() -> None:
    raw = spec_with({"memory": "16MiB", "timeout": 2, "cpus": 1.5, "pids": 64, "shm_size": 1 << 30})
    expected = json.loads(json.dumps(load_model(io.StringIO(json.dumps(raw)))[0]))
    ours = json.loads(json.dumps(ModelSpec.from_raw(raw).wire()))
    assert ours == expected
    assert ours["inferserver"] == raw["inferserver"]  # as written: "16MiB" stays a string


def test_a_spec_above_a_ceiling_is_reported_with_its_file_and_not_served(tmp_path: Path) -> None:
    (tmp_path / "greedy.json").write_text(json.dumps({**spec_with({"memory": "64g"}), "id": "greedy"}))
    (tmp_path / "modest.json").write_text(json.dumps({**spec_with({"memory": "1g"}), "id": "modest"}))
    settings = load_settings()
    result = load_model_directory(tmp_path, check=lambda spec: limits_for(settings, spec))
    assert sorted(result.models) == ["modest"]
    [error] = result.errors
    assert error.path == tmp_path / "greedy.json"
    assert error.reason == "inferserver/memory: 64 GiB is above the server's limit of 8 GiB (CONTAINER_MEMORY)"
    # The same spec is fine on a server with a higher ceiling.
    roomy = load_settings(CONTAINER_MEMORY="64g")
    assert sorted(load_model_directory(tmp_path, check=lambda spec: limits_for(roomy, spec)).models) == [
        "greedy",
        "modest",
    ]
