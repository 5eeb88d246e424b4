"""validate_run_config: every rule of the POST /models/{id} body, with the field and reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from inferserver.specs.errors import ConfigError
from inferserver.specs.model import ModelSpec
from inferserver.specs.runconfig import RunConfig, SessionRequest, validate_run_config


def _io(status: str, flag: str) -> dict[str, Any]:
    return {"name": "N", "description": "d", "status": status, "flag": flag, "extension": ".nrrd", "type": "volume"}


SPEC = ModelSpec.from_raw(
    {
        "json_version": "1.3",
        "id": "toy",
        "type": "docker",
        "name": "Toy",
        "organ": "",
        "task": "",
        "status": "",
        "modality": "",
        "version": "1",
        "docker": {"image_name": "toy", "image_tag": "1", "data_path": "/data"},
        "inputs": {"image": _io("required", "-i"), "prior": _io("suggested", "-p"), "mask": _io("optional", "-m")},
        "outputs": {"seg": _io("required", "-o"), "probs": _io("optional", "-q"), "extra": _io("suggested", "-e")},
        "params": {
            "count": {"name": "C", "description": "d", "flag": "--n", "type": "int", "default": 3, "min": 1, "max": 10},
            "rate": {
                "name": "R",
                "description": "d",
                "flag": "--r",
                "type": "float",
                "default": 0.5,
                "min": 0,
                "max": 1,
            },
            "fast": {"name": "F", "description": "d", "flag": "--fast", "type": "bool", "default": False},
            "label": {"name": "L", "description": "d", "flag": "--l", "type": "string", "default": "x"},
            "mode": {
                "name": "M",
                "description": "d",
                "flag": "--m",
                "type": "enum",
                "enum": {"Fast mode": "f", "Slow mode": "s"},
                "default": "f",
            },
        },
    }
)


def run(body: dict[str, Any]) -> RunConfig:
    return validate_run_config(SPEC, SessionRequest.model_validate(body))


def fails(body: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        run(body)
    assert str(err.value) == f"{err.value.field}: {err.value.reason}"
    return err.value


def test_empty_body_gives_defaults() -> None:
    cfg = run({})
    assert cfg.inputs == {"image": True, "prior": True, "mask": False}
    assert cfg.outputs == {"seg": True, "probs": False, "extra": True}
    assert cfg.params == {"count": 3, "rate": 0.5, "fast": False, "label": "x", "mode": "f"}
    assert cfg.enabled_inputs() == ["image", "prior"]
    assert cfg.enabled_outputs() == ["seg", "extra"]


def test_choices_and_values_are_taken() -> None:
    cfg = run(
        {
            "inputs": {"image": {"enabled": True}, "prior": {"enabled": False}, "mask": {"enabled": True}},
            "outputs": {"probs": {"enabled": True, "value": "ignored"}},
            "params": {
                "count": {"value": 10},
                "rate": {"value": 1},
                "fast": {"value": True},
                "label": {"value": ""},
                "mode": {"value": "s"},
            },
        }
    )
    assert cfg.inputs == {"image": True, "prior": False, "mask": True}
    assert cfg.outputs["probs"] is True
    assert cfg.params == {"count": 10, "rate": 1.0, "fast": True, "label": "", "mode": "s"}
    assert isinstance(cfg.params["rate"], float)


def test_entry_without_value_or_enabled_takes_default() -> None:
    cfg = run({"params": {"count": {}}, "inputs": {"mask": {}}})
    assert cfg.params["count"] == 3 and cfg.inputs["mask"] is False


@pytest.mark.parametrize("section, name", [("inputs", "nope"), ("params", "nope"), ("outputs", "nope")])
def test_unknown_name(section: str, name: str) -> None:
    entry = {"value": 1} if section == "params" else {"enabled": True}
    err = fails({section: {name: entry}})
    assert err.field == f"{section}/{name}"
    assert err.reason.startswith(f"unknown {section[:-1]}")


@pytest.mark.parametrize("section, name, kind", [("inputs", "image", "input"), ("outputs", "seg", "output")])
def test_required_cannot_be_disabled(section: str, name: str, kind: str) -> None:
    err = fails({section: {name: {"enabled": False}}})
    assert err.field == f"{section}/{name}"
    assert err.reason == f"{kind} {name} is required and cannot be disabled"


@pytest.mark.parametrize("value", [1, "true", None, 0])
def test_enabled_must_be_bool(value: Any) -> None:
    err = fails({"inputs": {"mask": {"enabled": value}}})
    assert err.field == "inputs/mask"
    assert "true or false" in err.reason


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("count", True, "must be an integer"),
        ("count", 2.0, "must be an integer"),
        ("count", "3", "must be an integer"),
        ("count", None, "must be an integer"),
        ("count", 0, "outside the allowed range [1, 10]"),
        ("count", 11, "outside the allowed range [1, 10]"),
        ("rate", False, "must be a number"),
        ("rate", "0.1", "must be a number"),
        ("rate", float("nan"), "finite"),
        ("rate", float("inf"), "finite"),
        ("rate", 1.5, "outside the allowed range [0, 1]"),
        ("fast", 1, "true or false"),
        ("fast", "true", "true or false"),
        ("label", 5, "must be a string"),
        ("label", None, "must be a string"),
        ("mode", "x", "one of the values 'f', 's'"),
        ("mode", "Fast mode", "is a label; send its value 'f'"),
    ],
)
def test_param_value_checks(name: str, value: Any, reason: str) -> None:
    err = fails({"params": {name: {"value": value}}})
    assert err.field == f"params/{name}"
    assert reason in err.reason


def test_int_bounds_inclusive_and_default_ranges() -> None:
    assert run({"params": {"count": {"value": 1}}}).params["count"] == 1
    assert run({"params": {"rate": {"value": 0}}}).params["rate"] == 0.0


def test_unknown_top_level_section_rejected_but_entry_extras_ignored() -> None:
    with pytest.raises(ValidationError):
        SessionRequest.model_validate({"inputs": {}, "bogus": {}})
    req = SessionRequest.model_validate({"params": {"count": {"value": 4, "note": "x"}}})
    assert validate_run_config(SPEC, req).params["count"] == 4


def test_schema_has_descriptions_and_example() -> None:
    schema = SessionRequest.model_json_schema()
    assert schema["examples"] and schema["additionalProperties"] is False
    assert all("description" in p for p in schema["properties"].values())


def test_run_config_json_round_trip() -> None:
    cfg = run({"params": {"rate": {"value": 0.25}}, "outputs": {"probs": {"enabled": True}}})
    data = json.loads(json.dumps(cfg.to_json()))
    assert RunConfig.from_json(data) == cfg


def test_matches_what_ablinfer_accepts_for_client_bodies() -> None:
    # The body ablinfer's DispatchRemote sends after its own normalize_model_config.
    import copy

    from ablinfer.model import normalize_model_config

    model = copy.deepcopy(SPEC.wire())
    client_cfg = {
        "inputs": {"image": {"value": "a"}, "prior": {"value": "b"}, "mask": {"enabled": True, "value": "c"}},
        "outputs": {"seg": {"value": "o"}, "probs": {"enabled": False, "value": None}, "extra": {"value": "e"}},
        "params": {"count": {"value": 7}, "rate": {"value": 0.75}, "mode": {"value": "s"}},
    }
    norm = normalize_model_config(model, client_cfg)
    body = {
        "inputs": {n: {"enabled": v["enabled"]} for n, v in norm["inputs"].items()},
        "params": norm["params"],
        "outputs": {n: {"enabled": v["enabled"]} for n, v in norm["outputs"].items()},
    }
    cfg = run(json.loads(json.dumps(body)))
    assert cfg.inputs == {n: v["enabled"] for n, v in norm["inputs"].items()}
    assert cfg.outputs == {n: v["enabled"] for n, v in norm["outputs"].items()}
    assert cfg.params == {n: v["value"] for n, v in norm["params"].items()}


HUGE = 10**400  # 401 digits: float() of it overflows


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("rate", HUGE, "an integer of about 401 digits is outside the allowed range [0, 1]"),
        ("rate", -HUGE, "an integer of about 401 digits is outside the allowed range [0, 1]"),
        ("count", HUGE, "an integer of about 401 digits is outside the allowed range [1, 10]"),
        ("label", "a\0b", "must not contain a NUL character (it cannot be passed to the model's command)"),
        ("label", "x" * (64 * 1024 + 1), "is 65537 bytes long; the limit is 65536 bytes (MAX_STRING_PARAM_BYTES)"),
        ("label", "é" * (32 * 1024 + 1), "is 65538 bytes long; the limit is 65536 bytes (MAX_STRING_PARAM_BYTES)"),
    ],
)
def test_values_a_model_command_cannot_take_are_refused_by_name(name: str, value: Any, reason: str) -> None:
    err = fails({"params": {name: {"value": value}}})
    assert (err.field, err.reason) == (f"params/{name}", reason)


def test_string_limit_is_inclusive_and_set_by_the_caller() -> None:
    assert run({"params": {"label": {"value": "x" * 64 * 1024}}}).params["label"] == "x" * 64 * 1024
    request = SessionRequest.model_validate({"params": {"label": {"value": "x" * 11}}})
    with pytest.raises(ConfigError, match="is 11 bytes long; the limit is 10 bytes"):
        validate_run_config(SPEC, request, max_string_bytes=10)


def test_a_huge_integer_under_an_infinite_bound_is_refused_not_overflowed() -> None:
    raw = json.loads(json.dumps(SPEC.wire()))
    raw["params"]["rate"]["max"] = float("inf")
    spec = ModelSpec.from_raw(raw)
    with pytest.raises(ConfigError, match="about 401 digits is too large for a float"):
        validate_run_config(spec, SessionRequest.model_validate({"params": {"rate": {"value": HUGE}}}))
    assert (
        validate_run_config(spec, SessionRequest.model_validate({"params": {"rate": {"value": 10**300}}})).params[
            "rate"
        ]
        == 1e300
    )


def test_long_wrong_values_are_not_echoed_whole() -> None:
    err = fails({"params": {"count": {"value": "y" * 100_000}}})
    assert len(err.reason) < 120
