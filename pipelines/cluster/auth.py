"""Ray token authentication: finding the token the way Ray does, and turning token mode on for a driver.

Ray 2.60 clusters may require a token (``RAY_AUTH_MODE=token``). Both the job
client (:mod:`.jobs`) and a driver joining a cluster (:mod:`.connect`) look it
up here, in Ray's own order of precedence: ``RAY_AUTH_TOKEN``, then the file
named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import PipelineError

TOKEN_HELP = (
    "get the cluster's token by running `ray get-auth-token` on the head node "
    "(for a `ray up` cluster: `ray exec cluster.yaml 'ray get-auth-token'`), then "
    "`export RAY_AUTH_TOKEN=<token>` here (or save it to ~/.ray/auth_token, "
    "or point RAY_AUTH_TOKEN_PATH at a file that holds it)"
)


@dataclass(frozen=True)
class AuthToken:
    """A Ray auth token and where it was found (for error messages)."""

    value: str
    source: str


def find_token() -> AuthToken | None:
    """Find the Ray auth token the way Ray does, or None if there is none.

    Order: ``RAY_AUTH_TOKEN``; the file ``RAY_AUTH_TOKEN_PATH`` names (which
    must then be readable and non-empty, as Ray requires); ``~/.ray/auth_token``.
    """
    env_token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if env_token:
        return AuthToken(env_token, "RAY_AUTH_TOKEN")
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        token = _read_token_file(Path(token_path).expanduser())
        if not token:
            raise PipelineError(
                f"RAY_AUTH_TOKEN_PATH is {token_path}, but that file is missing or "
                f"empty; fix the path or unset it. To get a token: {TOKEN_HELP}."
            )
        return AuthToken(token, f"RAY_AUTH_TOKEN_PATH ({token_path})")
    default_path = Path.home() / ".ray" / "auth_token"
    token = _read_token_file(default_path)
    return AuthToken(token, str(default_path)) if token else None


def _read_token_file(path: Path) -> str:
    """Return the stripped contents of a token file, or '' if unreadable."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def enable_token_auth_if_available() -> bool:
    """Turn on Ray token auth for this process if RAY_AUTH_MODE is unset and a token exists; True if on."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if find_token() is None:
        return False
    try:  # Ray's own switch (it also refreshes Ray's cached config); absent before Ray had token auth
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:
        return False
    _enable_token_auth()
    return True
