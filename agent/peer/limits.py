"""Raise the open file limit so that ``max_connections`` connections fit.

Call ``raise_open_file_limit(needed)`` once before accepting. It raises the soft
RLIMIT_NOFILE to the hard limit when the soft one is lower than ``needed`` (the
default soft limit of 1024 is far below 4096 connections of several descriptors
each), and logs a warning when even the hard limit is too low. It never raises the
hard limit, which needs CAP_SYS_RESOURCE and belongs to the service manager.
"""

from __future__ import annotations

import logging
import resource

from agent.log import event

logger = logging.getLogger(__name__)

# Descriptors the agent needs besides connections: manifests, keys, grpcio, logs.
BASE_DESCRIPTORS = 256


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft open file limit toward ``needed`` plus a margin; return the new limit."""
    wanted = needed + BASE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        event(logger, logging.INFO, "open file limit raised", limit=soft)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        event(
            logger,
            logging.WARNING,
            "open file limit is below what max_connections needs: raise LimitNOFILE "
            "or lower max_connections",
            limit=soft,
            count=wanted,
        )
    return soft
