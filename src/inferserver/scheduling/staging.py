"""How a run's inputs reach its container (INPUT_STAGING): copied in through the engine's archive API, or
bind-mounted read-only from the session's directory when the engine runs on this host."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..runner.jobs import FileTransfer, RunJob
from ..sessions.state import SessionPlan
from ..specs.command import container_path

# A model may run as any uid, and with every capability dropped even its root reads only what the mode
# allows; the session directory stays 0750 (UMask=0027), so no other user of the host reaches the file.
READABLE_BY_ALL = 0o644


def mount_source(path: Path, settings: Settings) -> str:
    """`path` as the Docker engine's host sees it: under SESSION_PATH, the same place under MOUNT_SOURCE_PATH."""
    path = path.absolute()
    if settings.MOUNT_SOURCE_PATH is None:
        return str(path)
    try:
        inside = path.relative_to(settings.SESSION_PATH.absolute())
    except ValueError:  # not a session's file (`inferserver run` links the user's own files in)
        return str(path)
    return str(settings.MOUNT_SOURCE_PATH / inside)


def input_transfers(plan: SessionPlan, settings: Settings) -> list[FileTransfer]:
    """The enabled inputs, each with the source of its bind mount in mount mode."""
    transfers = []
    for name in plan.config.enabled_inputs():
        host = plan.input_path(name)
        source = mount_source(host, settings) if settings.INPUT_STAGING == "mount" else None
        transfers.append(FileTransfer(name, host, container_path(plan.spec, name), source))
    return transfers


def mount_note(settings: Settings) -> str:
    """What the user reads after the engine's refusal of a bind mount: the settings that decide its source."""
    if settings.INPUT_STAGING != "mount":
        return ""
    where = (
        f"MOUNT_SOURCE_PATH={settings.MOUNT_SOURCE_PATH}"
        if settings.MOUNT_SOURCE_PATH is not None
        else f"MOUNT_SOURCE_PATH unset, so SESSION_PATH={settings.SESSION_PATH}"
    )
    return (
        f"INPUT_STAGING=mount, and the Docker engine's host has no session files at {where}: set "
        "MOUNT_SOURCE_PATH to the host path of SESSION_PATH, or INPUT_STAGING=archive for an engine on another host"
    )


def let_models_read(job: RunJob) -> None:
    """Make the inputs to be mounted readable by whatever user the model runs as (uploads are 0640 under UMask=0027)."""
    for transfer in job.mounted_inputs:
        # A link is `inferserver run`'s to the user's own file: not ours to change.
        if not transfer.host.is_symlink():
            transfer.host.chmod(READABLE_BY_ALL)
