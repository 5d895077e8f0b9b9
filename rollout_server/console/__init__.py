"""The operator console at ``/console``: pages for people, on the API's data and roles.

Server-rendered HTML (Jinja, shipped with Flask), a stylesheet and small scripts served from
``static/`` (no CDN, no build step); sign-in with an operator token opens a server-side
session (:mod:`rollout_server.console.sessions`). docs/console.md shows the pages.
"""

from rollout_server.console import (  # noqa: F401 (their routes join bp)
    action_pages,
    create_pages,
    read_pages,
    webhook_pages,
)
from rollout_server.console.pages import bp

__all__ = ["bp"]
