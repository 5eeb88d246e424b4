"""Settings: the old server's names and defaults, read from a Python file and from the environment.

Precedence, highest first: keyword arguments, env vars `INFERSERVER_<NAME>`, the Python settings file
named by `INFERSERVER_SETTINGS` (existing Flask-era deployments keep their file), the defaults.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .sizes import DOCKER_MIN_MEMORY, parse_size_at_least
from .specs.runconfig import MAX_STRING_BYTES

ENV_PREFIX = "INFERSERVER_"
SETTINGS_FILE_VAR = "INFERSERVER_SETTINGS"


class SettingsError(Exception):
    """A setting has a value the server cannot start with; the message names it."""


class GpuMode(StrEnum):
    AUTO = "auto"  # all GPUs when the engine reports the NVIDIA runtime, none otherwise
    NONE = "none"
    ALL = "all"


GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10
# Linux refuses to exec a command with one argument over 32 pages (128 KiB, MAX_ARG_STRLEN), NUL included.
STRING_PARAM_CEILING = 128 * KiB - 1


def size_at_least(minimum: int) -> BeforeValidator:
    """A byte count written as people do ("8g", "512MiB", "2GB" or plain bytes; see sizes.py), >= minimum."""
    return BeforeValidator(lambda value: parse_size_at_least(value, minimum))


Size = Annotated[int, size_at_least(1)]


# A GPU's id as NVIDIA_VISIBLE_DEVICES takes it: an index (0, or 0:1 for a MIG slice) or a UUID (GPU-…, MIG-…).
_DEVICE_ID = re.compile(r"^(\d+(:\d+)?|(GPU|MIG)-[A-Za-z0-9/-]+)$")


def _parse_gpus(value: Any) -> Any:
    """`auto`/`none`/`all`, or device ids listed as `0,1,2,3` (a list in the settings file): a pool."""
    if isinstance(value, GpuMode):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        word = value.strip().lower()
        if word in {m.value for m in GpuMode}:
            return GpuMode(word)
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be auto, none, all or a list of GPU ids such as 0,1,2,3")
    devices = tuple(str(item).strip() for item in value)
    if not devices or not all(_DEVICE_ID.match(d) for d in devices):
        raise ValueError("must be auto, none, all or a list of GPU ids such as 0,1,2,3 (indices or GPU-… UUIDs)")
    if len(set(devices)) != len(devices):
        raise ValueError("lists a GPU more than once")
    return devices


# NoDecode: `0,1,2,3` in the environment is this setting's own syntax, not JSON.
GpuSetting = Annotated[GpuMode | tuple[str, ...], NoDecode, BeforeValidator(_parse_gpus)]


# The schemes a Docker engine is reached by; tcp/https speak TLS unless `insecure` (http: plain, insecure only).
ENGINE_SCHEMES = ("unix", "tcp", "https", "http", "ssh")
_ENGINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TLS_FILES = ("tls_ca", "tls_cert", "tls_key")


def _readable(path: Path) -> Path:
    """The file must exist and be readable by the server's user; opened, never read (a key's bytes stay out)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"file {str(path)!r} cannot be opened: {exc.strerror or exc}") from None
    return path


class EngineEntry(BaseModel):
    """One Docker engine of ENGINES: where it is, how it is trusted, what it offers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short name in logs, labels and metrics, e.g. gpu2.")
    url: str = Field(description="unix:///path, tcp://host:2376 or https://host:2376 (TLS), ssh://user@host.")
    tls_ca: Path | None = Field(None, description="CA certificate that signed the engine's server certificate.")
    tls_cert: Path | None = Field(None, description="This server's client certificate.")
    tls_key: Path | None = Field(None, description="This server's client key (only its path is ever logged).")
    insecure: bool = Field(False, description="Allow plain tcp:// (no TLS): anyone on the network owns the engine.")
    gpus: GpuSetting = Field(GpuMode.NONE, description="auto, none, all, or this engine's device ids: its pool.")
    max_runs: int | None = Field(None, ge=1, description="Runs at once on this engine; default its GPU count or 1.")
    labels: dict[str, str] = Field(default_factory=dict, description="What a model's engine_labels may require.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENGINE_NAME.match(value):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ENGINE_SCHEMES or not rest:
            raise ValueError(f"must start with one of {', '.join(s + '://' for s in ENGINE_SCHEMES)} and name a host")
        return value

    @field_validator(*TLS_FILES)
    @classmethod
    def _tls_file(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable(value)

    @model_validator(mode="after")
    def _transport(self) -> EngineEntry:
        tls = [f for f in TLS_FILES if getattr(self, f) is not None]
        if self.scheme in ("tcp", "https") and not self.insecure:
            missing = [f for f in TLS_FILES if f not in tls]
            if missing:
                raise ValueError(
                    f"{self.url} needs {', '.join(missing)} (TLS with client certificates; verification is always on),"
                    " or insecure: true for plain TCP"
                )
        elif tls:
            raise ValueError(f"{', '.join(tls)} only apply to tcp:// or https:// engines without insecure: true")
        if self.insecure and self.scheme not in ("tcp", "http"):
            raise ValueError("insecure: true only applies to tcp:// or http:// engines")
        if self.scheme == "http" and not self.insecure:
            raise ValueError("http:// is plain TCP: use https:// with TLS files, or set insecure: true")
        return self

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0]

    @property
    def pool(self) -> tuple[str, ...]:
        return self.gpus if isinstance(self.gpus, tuple) else ()

    @property
    def runs_at_once(self) -> int:
        return self.max_runs or max(len(self.pool), 1)

    @property
    def docker_url(self) -> str:
        """The URL as aiodocker takes it: a TLS engine as https:// (aiodocker keeps tcp:// plain)."""
        rest = self.url.partition("://")[2]
        if self.scheme in ("tcp", "https"):
            return f"{'http' if self.insecure else 'https'}://{rest}"
        return self.url

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verification on (CA and host name), our client certificate offered; None without TLS."""
        if self.tls_ca is None or self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context


def _parse_engines(value: Any) -> Any:
    """JSON text (a list of engines), a path to a JSON file of it, or the list itself (settings file)."""
    if value is None or value == "":
        return None
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("[")):
        path = Path(value)
        try:
            value = path.read_text()
        except OSError as exc:
            raise ValueError(f"the engines file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON: {exc}") from None
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of engines, each an object with name and url")
    entries = []
    for index, item in enumerate(value):
        label = f"entry {index}" + (f" ({item['name']!r})" if isinstance(item, dict) and "name" in item else "")
        try:
            entries.append(EngineEntry.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "the entry"
            raise ValueError(f"{label}, field {field}: {first['msg'].removeprefix('Value error, ')}") from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(
            f"names an engine more than once: {', '.join(sorted({n for n in names if names.count(n) > 1}))}"
        )
    return entries


EngineSetting = Annotated[list[EngineEntry] | None, NoDecode, BeforeValidator(_parse_engines)]


class PythonFileSource(PydanticBaseSettingsSource):
    """Reads UPPERCASE names from a Python file, as Flask's `config.from_envvar` did."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.values = self._load() if path else {}

    def _load(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            source = Path(self.path).read_text()
        except OSError as exc:
            raise SettingsError(f"{SETTINGS_FILE_VAR}={self.path!r}: cannot read the settings file: {exc}") from exc
        namespace: dict[str, Any] = {"__file__": self.path}
        try:
            exec(compile(source, self.path, "exec"), namespace)
        except Exception as exc:
            raise SettingsError(f"{SETTINGS_FILE_VAR}={self.path!r}: the settings file fails to run: {exc!r}") from exc
        return {k: v for k, v in namespace.items() if k.isupper() and k in self.settings_cls.model_fields}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class Settings(BaseSettings):
    """Every setting of the old server keeps its name, meaning and default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=True, extra="ignore")

    MODEL_PATH: Path = Field(Path("/etc/inferserver/models"), description="Directory of model JSON specs.")
    SESSION_PATH: Path = Field(Path("/var/inferserver"), description="Directory for session files; must be writable.")
    CLEANUP_TIMER: int = Field(300, description="Seconds between session clean-ups; -1 disables clean-up.")
    CLEANUP_FINISHED: bool = Field(True, description="Also clean up complete and failed sessions.")
    CLEANUP_FILES: bool = Field(False, description="Remove a cleaned-up session's files from disk.")
    CLEANUP_SECONDS: int = Field(3600, ge=0, description="Seconds of inactivity before a session is cleaned up.")
    CHECK_INPUT_FILETYPES: bool = Field(True, description="Refuse inputs whose sniffed type differs from the spec's.")
    WORKER_THREADS: int = Field(1, ge=1, description="How many runs execute at once.")
    CONVERT_INPUTS: bool = Field(
        True,
        description=(
            "Convert an upload in .nrrd/.nii/.nii.gz for an input that expects another of these (needs the convert "
            "extra)."
        ),
    )
    DATABASE_URL: str | None = Field(
        None, description="SQLAlchemy async URL of the session database; default: SQLite in SESSION_PATH."
    )
    GPUS: GpuSetting = Field(
        GpuMode.AUTO,
        description="GPU requests: auto (when the engine has the NVIDIA runtime), none, all (every run shares "
        "every GPU), or device ids such as 0,1,2,3: a pool from which each run gets its own GPUS_PER_RUN.",
    )
    GPUS_PER_RUN: int | None = Field(
        None,
        ge=1,
        description="GPUs each run gets from the GPUS pool (default: all of them); a spec may ask otherwise.",
    )
    ENGINES: EngineSetting = Field(
        None,
        description="Docker engines runs are placed on: a JSON list (or the path of a JSON file) of objects with "
        "name, url, tls_ca/tls_cert/tls_key, gpus, max_runs, labels; unset: the one engine of DOCKER_HOST.",
    )
    ENGINE_GRACE: float = Field(
        120.0,
        gt=0,
        description="Seconds a run on an engine that stopped answering waits for it before it is re-queued "
        "elsewhere (with ENGINES).",
    )
    CONTAINER_NETWORK: str = Field(
        "none", min_length=1, description="Docker network for model containers; none = no network."
    )
    LOG_FORMAT: Literal["text", "json"] = Field(
        "text", description="Log lines as plain text, or one JSON object per line."
    )
    MAX_JSON_BYTES: int = Field(
        1 << 20, ge=1024, description="Largest JSON request body (POST /models/{id}); larger is 413."
    )
    MAX_HEADER_BYTES: int = Field(
        64 << 10, ge=4096, description="Largest request line plus headers; larger is 431 (inferserver serve)."
    )
    HEADER_TIMEOUT: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a client may take to send a request's line and headers; then 408 and the connection "
        "is closed (inferserver serve and the shipped gunicorn config).",
    )
    MAX_CONCURRENT_REQUESTS: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Requests in flight per worker process beyond which a new one is answered 503 with Retry-After "
        "at once; uploads, log streams and downloads do not count.",
    )
    UPLOAD_IDLE_TIMEOUT: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds an upload may go without sending 16 KiB of its body; then it is ended with 408, its "
        "partial file dropped and the input free for a new upload.",
    )
    TUS_EXPIRY: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="Seconds a resumable (tus) upload is kept after its last PATCH (or its creation); then it "
        "answers 410 and the janitor removes it and its bytes.",
    )
    AUTH_USERS_FILE: Path | None = Field(
        None, description="File of `user:hash` lines; when set, HTTP Basic is accepted (and required)."
    )
    AUTH_TOKENS_FILE: Path | None = Field(
        None, description="File of sha256 hex API token hashes; when set, Bearer tokens are accepted (and required)."
    )
    AUTH_MAX_FAILURES: int = Field(
        10,
        ge=1,
        description=(
            "Failed credentials one client address may send within AUTH_FAILURE_WINDOW; then 429 until the window ends."
        ),
    )
    AUTH_FAILURE_WINDOW: int = Field(
        60, ge=1, description="Seconds over which AUTH_MAX_FAILURES counts, from an address's first failure."
    )
    MAX_STRING_PARAM_BYTES: Annotated[int, size_at_least(1)] = Field(
        MAX_STRING_BYTES,
        description=(
            "Largest string parameter value, in UTF-8 bytes; larger is 400 (each value becomes one argument of the "
            "model's command)."
        ),
    )
    # Limits. The container ones are also the ceilings of what a spec's `inferserver` section may ask for.
    MAX_UPLOAD_BYTES: Size = Field(16 * GiB, description="Largest input upload; a bigger one is refused with 413.")
    MAX_OUTPUT_BYTES: Size = Field(
        16 * GiB, description="Largest output file a model may write; a bigger one fails the run."
    )
    DISK_RESERVE_BYTES: Annotated[int, size_at_least(0)] = Field(
        2 * GiB,
        description=(
            "Free space SESSION_PATH keeps; an upload eating into it is refused with 507, an output fails the run."
        ),
    )
    RUN_TIMEOUT: int = Field(
        21600, gt=0, description="Seconds a model container may run before it is stopped and the session fails."
    )
    CONTAINER_MEMORY: Annotated[int, size_at_least(DOCKER_MIN_MEMORY)] = Field(
        8 * GiB, description="Memory limit of a model container (no swap beyond it)."
    )
    CONTAINER_CPUS: float = Field(0.0, ge=0, description="CPUs a model container may use; 0 = no limit.")
    CONTAINER_PIDS: int = Field(4096, gt=0, description="Processes and threads a model container may have.")
    CONTAINER_SHM: Size = Field(2 * GiB, description="Size of a model container's /dev/shm.")
    LOG_MAX_BYTES: Size = Field(64 * MiB, description="A session log stops growing past this size.")
    MAX_CONVERT_BYTES: Size = Field(
        1 * GiB,
        description=(
            "Largest volume (voxel bytes by its verified header) the server converts, inputs and ?format= outputs; a "
            "bigger one is refused with 413."
        ),
    )
    CONVERT_TIMEOUT: int = Field(
        300, gt=0, description="Seconds (wall clock, and CPU) a conversion may take before its process is killed (413)."
    )
    MAX_CONVERSIONS: int = Field(
        2, ge=1, description="Conversions running at once, across all worker processes; more wait their turn."
    )
    MAX_SESSIONS: int = Field(200, gt=0, description="Live (not complete or failed) sessions the server holds at once.")
    INPUT_STAGING: Literal["archive", "mount"] = Field(
        "archive",
        description="How inputs reach a model container: archive (copied in through the engine's "
        "archive API; any engine, also a remote one) or mount (bind-mounted read-only; the engine must run on "
        "this host).",
    )
    MOUNT_SOURCE_PATH: Path | None = Field(
        None,
        description="With INPUT_STAGING=mount: the host path at which the Docker engine sees SESSION_PATH "
        "(a server in a container); default: SESSION_PATH itself.",
    )

    @field_validator("CLEANUP_TIMER")
    @classmethod
    def _timer(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be a positive number of seconds, or -1 to disable clean-up")
        return value

    @field_validator("MAX_STRING_PARAM_BYTES")
    @classmethod
    def _exec_limit(cls, value: int) -> int:
        if value > STRING_PARAM_CEILING:
            raise ValueError(
                f"must be at most {STRING_PARAM_CEILING} bytes: Linux cannot pass one command "
                "argument of 128 KiB or more to a model"
            )
        return value

    @field_validator("AUTH_USERS_FILE", "AUTH_TOKENS_FILE", "MOUNT_SOURCE_PATH", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        return None if value == "" else value  # `INFERSERVER_AUTH_USERS_FILE=` turns access control off

    @field_validator("MOUNT_SOURCE_PATH")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path (the Docker engine resolves it on its own host)")
        return value

    @model_validator(mode="after")
    def _mount_source_needs_mount(self) -> Settings:
        if self.MOUNT_SOURCE_PATH is not None and self.INPUT_STAGING != "mount":
            raise ValueError(
                f"setting MOUNT_SOURCE_PATH={str(self.MOUNT_SOURCE_PATH)!r} is only used with INPUT_STAGING=mount "
                f"(INPUT_STAGING is {self.INPUT_STAGING!r})"
            )
        return self

    @model_validator(mode="after")
    def _gpus_per_run(self) -> Settings:
        if self.GPUS_PER_RUN is None:
            return self
        if self.ENGINES is not None:  # each engine's `gpus` is its pool; a run's GPUs come from one engine
            largest = max(len(e.pool) for e in self.ENGINES)
            if largest < self.GPUS_PER_RUN:
                raise ValueError(
                    f"setting GPUS_PER_RUN={self.GPUS_PER_RUN!r} is more than the {largest} GPUs the largest "
                    "engine of ENGINES lists"
                )
            return self
        if not isinstance(self.GPUS, tuple):
            raise ValueError(
                f"setting GPUS_PER_RUN={self.GPUS_PER_RUN!r} needs GPUS to list the device ids (e.g. 0,1,2,3), "
                f"not {self.GPUS.value!r}: only a pool of known devices can be shared out"
            )
        if len(self.GPUS) < self.GPUS_PER_RUN:
            raise ValueError(
                f"setting GPUS_PER_RUN={self.GPUS_PER_RUN!r} is more than the {len(self.GPUS)} GPUs GPUS lists"
            )
        return self

    @property
    def gpu_pool(self) -> tuple[str, ...]:
        """The devices runs get their own share of; empty when GPUS is a mode (no pool)."""
        return self.GPUS if isinstance(self.GPUS, tuple) else ()

    @property
    def runner_gpu_mode(self) -> GpuMode:
        """The runner's own mode; with a pool each job names its devices, so the mode only matters without one."""
        return self.GPUS if isinstance(self.GPUS, GpuMode) else GpuMode.NONE

    @property
    def gpus_per_run(self) -> int:
        return self.GPUS_PER_RUN or len(self.gpu_pool)

    @property
    def engines(self) -> list[EngineEntry]:
        """ENGINES, or the one engine of today: DOCKER_HOST (or the local socket) with GPUS and WORKER_THREADS."""
        if self.ENGINES is not None:
            return self.ENGINES
        # Built without validation: its url is aiodocker's default (empty), not an address to check.
        return [EngineEntry.model_construct(name="local", url="", gpus=self.GPUS, max_runs=self.WORKER_THREADS)]

    @property
    def run_gpus(self) -> int:
        """GPUs a run takes from one engine's pool unless its spec asks otherwise: GPUS_PER_RUN; unset, all of the
        one engine's GPUS, or 1 with ENGINES (engines' pools differ in size)."""
        return (self.GPUS_PER_RUN or 1) if self.ENGINES is not None else self.gpus_per_run

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, PythonFileSource(settings_cls, os.environ.get(SETTINGS_FILE_VAR))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise SettingsError naming each wrong setting and its value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across settings: its message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = ".".join(str(p) for p in err["loc"])
            if name == "ENGINES":  # the message names the entry and field; the input may be a whole file
                problems.append(f"setting ENGINES is invalid: {err['msg'].removeprefix('Value error, ')}")
                continue
            problems.append(f"setting {name}={err.get('input')!r} is invalid: {err['msg']}")
        raise SettingsError("; ".join(problems)) from exc
