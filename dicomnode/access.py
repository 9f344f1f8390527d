"""Who may associate with the node: the calling AE allow list, bound to addresses.

`admit` decides on an A-ASSOCIATE-RQ before any presentation context is negotiated; a refusal
is an A-ASSOCIATE-RJ whose result, source and reason (PS3.8 9.3.4) the caller's log will show.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from dicomnode.config import AccessSection

PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 0x03, 0x07
LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: its result, source and diagnostic, and the reason in words."""

    result: int
    source: int
    diagnostic: int
    reason: str


def admit(
    access: AccessSection, node_ae_title: str, calling: str, called: str, address: str
) -> Rejection | None:
    """None when `calling` at `address` may associate to `called`; else why not."""
    calling, called = calling.strip(), called.strip()
    if access.require_called_ae_title and called != node_ae_title.strip():
        return Rejection(
            PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED, "called AE title not this node's"
        )
    titles = [c for c in access.allow if c.ae_title in ("*", calling)]
    if not titles:
        return Rejection(
            PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED, "calling AE title not allowed"
        )
    if not any(_from(address, c.addresses) for c in titles):
        # PS3.8 has no reason for a wrong address: the calling AE is not recognised from there.
        return Rejection(
            PERMANENT,
            SERVICE_USER,
            CALLING_AE_NOT_RECOGNISED,
            "calling AE title not allowed from this address",
        )
    return None


def too_many(established: int, maximum: int) -> Rejection | None:
    """A transient rejection when `established` associations already fill `maximum`."""
    if established < maximum:
        return None
    return Rejection(
        TRANSIENT,
        SERVICE_PROVIDER_PRESENTATION,
        LOCAL_LIMIT_EXCEEDED,
        f"{established} associations open (the limit is {maximum})",
    )


def _from(address: str, patterns: tuple[str, ...]) -> bool:
    if not patterns:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in _network(p) for p in patterns)


@lru_cache(maxsize=256)
def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(pattern, strict=False)
