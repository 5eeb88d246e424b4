"""The open-file limit: every connection, upload and log stream holds file descriptors, and the usual soft
limit (1024) is far below what a server needs. The soft limit is raised to the hard one at start."""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

FDS_PER_LOG_STREAM = 2  # its connection and the log file it follows
UNLIMITED_CAP = 1 << 20  # Linux refuses an infinite RLIMIT_NOFILE; this is its usual nr_open


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("open files: cannot raise the soft limit from %d to %d: %s", soft, target, exc)
            return soft
        logger.info(
            "open files: soft limit raised from %d to %d (room for about %d log streams at once)",
            soft,
            target,
            target // FDS_PER_LOG_STREAM,
        )
        return target
    return soft
