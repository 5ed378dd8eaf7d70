"""Who may reach the HTTP service: the bearer token, the exposure warning, the socket.

The token comes from a file or ``$DIFFMM_SERVE_TOKEN`` and must be one line of printable
ASCII; a service on an address other than loopback without a token is warned about; the
listening socket is bound before uvicorn starts, so that a taken port is one line.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from diffmm.errors import ConfigError

#: The environment variable that holds the token when no token file is given.
TOKEN_ENV = "DIFFMM_SERVE_TOKEN"


def check_token(token: str) -> str:
    """``token`` if it can be sent as a bearer token, else :class:`ConfigError`."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("the token must be one line of printable ASCII characters without spaces")
    return token


def read_token(token_file: str | Path | None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``$DIFFMM_SERVE_TOKEN``."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"{path}: cannot read the token file ({why})") from None
        token = text.strip()
        if not token:
            raise ConfigError(f"{path}: the token file is empty; put the token in it")
        try:
            return check_token(token)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    token = os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    if not token.strip():
        raise ConfigError(f"{TOKEN_ENV} is set but empty: set it to the token, or unset it")
    try:
        return check_token(token.strip())
    except ConfigError as exc:
        raise ConfigError(f"{TOKEN_ENV}: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """What to warn about when serving on ``host`` (None: nothing)."""
    if token is not None or is_loopback(host):
        return None
    return (
        f"--host {host} is not a loopback address and no token is set: anyone who can "
        f"reach this port can query the model; pass --token-file FILE or set {TOKEN_ENV}"
    )


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``; ConfigError (one line) where it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port, "
            "or stop the program that uses it"
        ) from None
