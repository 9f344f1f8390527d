"""HTTP credentials for DICOMweb destinations, read from a file the configuration names.

Secrets never sit in the node's TOML (which `check-config` prints and admins share): a
destination names a `credentials_file`, a small TOML file readable by the service user only,
holding either HTTP basic credentials or a bearer token:

    username = "wristai"
    password = "..."

or

    token = "..."

It is read at each delivery, so a rotated secret needs no restart. Messages name the file and
the key at fault, never a secret.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BASIC_KEYS = frozenset({"username", "password"})
BEARER_KEYS = frozenset({"token"})


class CredentialsError(ValueError):
    """A credentials file that cannot be used; the message names the file, never a secret."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (`username`, `password`) or bearer (`token`) credentials; repr hides them."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def headers(self) -> dict[str, str]:
        """The Authorization header for a bearer token (basic auth goes by `basic`)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def basic(self) -> tuple[str, str] | None:
        """(username, password) for HTTP basic authentication, or None."""
        return (self.username, self.password) if self.username else None


def read_credentials(path: str | Path) -> Credentials:
    """Read and check the credentials file at `path` (format in the module docstring)."""
    where = f"credentials file {str(path)!r}"
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialsError(f"{where} does not exist") from None
    except PermissionError:
        raise CredentialsError(f"{where} is not readable by this user") from None
    except IsADirectoryError:
        raise CredentialsError(f"{where} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{where} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError:
        # The decoder's message may quote the line, and so a secret.
        raise CredentialsError(f"{where} is not valid TOML (see the format in "
                               "config/dicomnode.toml)") from None  # fmt: skip
    keys = set(raw)
    unknown = sorted(keys - BASIC_KEYS - BEARER_KEYS)
    if unknown:
        raise CredentialsError(f"{where} has the unknown key '{unknown[0]}' (username and "
                               "password, or token)")  # fmt: skip
    if keys not in (BASIC_KEYS, BEARER_KEYS):
        raise CredentialsError(f"{where} must hold either 'username' and 'password' (HTTP "
                               "basic) or 'token' (bearer), not both or a part")  # fmt: skip
    for key in sorted(keys):
        if not isinstance(raw[key], str) or not raw[key]:
            raise CredentialsError(f"{where}: '{key}' must be a non-empty string")
    if ":" in raw.get("username", ""):
        raise CredentialsError(f"{where}: 'username' must not contain ':' (HTTP basic)")
    return Credentials(**raw)
