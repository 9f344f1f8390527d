"""AE titles (PS3.5 6.2, VR AE) and DICOM peer addresses written ``AET@HOST:PORT``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# 1-16 characters of the default repertoire without backslash (the value separator) or controls.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
AE_TITLE_RULE = "must be 1-16 printable ASCII characters without backslash, not all spaces"


def is_valid_ae_title(value: str) -> bool:
    """True for an AE title: 1-16 printable ASCII characters, no backslash, not all spaces."""
    return _AE_TITLE.fullmatch(value) is not None and bool(value.strip())


@dataclass(frozen=True)
class AeAddress:
    """A remote Application Entity: AE title, host (name or IP address) and TCP port."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> AeAddress:
        """Parse ``AET@HOST:PORT``; an IPv6 host is written in brackets (``AET@[::1]:104``).

        ValueError with one sentence saying what is wrong otherwise.
        """
        aet, at, rest = text.strip().rpartition("@")  # a host never holds "@"; a title may
        host, colon, port_text = rest.rpartition(":")
        if not at or not colon or not host:
            raise ValueError(f"address {text!r} is not of the form AET@HOST:PORT")
        if not is_valid_ae_title(aet):
            raise ValueError(f"AE title {aet!r} {AE_TITLE_RULE}")
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        if host.startswith("[") or host.endswith("]"):
            inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
            try:
                ipaddress.IPv6Address(inner)
            except ValueError:
                raise ValueError(f"host {host!r} is not an IPv6 address in brackets") from None
            host = inner
        elif ":" in host:
            raise ValueError(f"host {host!r}: write an IPv6 address in brackets, [{host}]")
        if any(c.isspace() for c in host):
            raise ValueError(f"host {host!r} holds white space")
        return cls(aet=aet, host=host, port=int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"
