"""What the multi-host URLs share (``redis+sentinel://`` and ``redis+cluster://``): splitting, hosts, options.

Split by hand, not by :func:`urllib.parse.urlsplit`, which refuses a host list with an IPv6 member
and knows nothing of a list. Every error is a ``ValueError`` naming what is wrong, never a password.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping

__all__ = [
    "NODE_OPTIONS",
    "TLS_OPTIONS",
    "OptionParser",
    "count",
    "flag",
    "host_list",
    "parse_options",
    "redact_multi_host",
    "split_url",
    "userinfo",
]

OptionParser = Callable[[str], object]


def flag(value: str) -> bool:
    """A boolean option: ``true``/``false`` (or 1/0, yes/no, on/off)."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (true or false)")


def _cert_reqs(value: str) -> str:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError("not one of none, optional, required")
    return value.lower()


def count(value: str) -> int:
    """A whole number option, 0 or more."""
    number = int(value)
    if number < 0:
        raise ValueError("negative")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("not a positive number of seconds")
    return number


NODE_OPTIONS: dict[str, OptionParser] = {
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": flag,
    "health_check_interval": count,
    "max_connections": count,
    "retry_on_timeout": flag,
}
"""The data-node connections' options a URL may carry (as in a ``redis://`` URL)."""

TLS_OPTIONS: dict[str, OptionParser] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": flag,
}
"""The TLS options, allowed with a ``rediss+...`` scheme only."""


def split_url(url: str) -> tuple[str, str, str, str, str]:
    """``(scheme, userinfo, hosts, path, query)``, the path with its leading ``/``. The userinfo ends at
    the last ``@`` before the query, so a password with a ``/`` (it should be percent-encoded) is
    still taken whole, and never shown as a host."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    info, _, rest = rest.rpartition("@")
    hosts, slash, path = rest.partition("/")
    return scheme, info, hosts, slash + path, query


def userinfo(info: str) -> tuple[str | None, str | None]:
    """``(username, password)`` of a URL's userinfo, percent-decoded (None where absent)."""
    if not info:
        return None, None
    user, has_password, password = info.partition(":")
    return (urllib.parse.unquote(user) or None, urllib.parse.unquote(password) if has_password else None)


def host_list(hosts: str, *, what: str, default_port: int, form: str) -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` of a comma-separated list; ``what`` names a member in errors ("Sentinel host")."""
    if not hosts:
        raise ValueError(f"no {what} (expected {form})")
    return tuple(_host(member, what, default_port) for member in hosts.split(","))


def _host(member: str, what: str, default_port: int) -> tuple[str, int]:
    if member.startswith("["):  # [IPv6]:port
        host, bracket, port_part = member[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            raise ValueError(f"{what} {member!r}: an IPv6 address is written [address]:port")
        port = port_part[1:]
    else:
        host, _, port = member.partition(":")
    if not host:
        raise ValueError(f"{what} {member!r}: no host name (an empty entry in the list?)")
    if not port:
        return urllib.parse.unquote(host), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {member!r}: port {port!r} is not a number from 1 to 65535")
    return urllib.parse.unquote(host), int(port)


def parse_options(
    query: str,
    extra: Mapping[str, OptionParser],
    *,
    tls: bool,
    tls_scheme: str,
    hints: Mapping[str, str],
    secret: frozenset[str] = frozenset(),
) -> dict[str, object]:
    """The query's options, each parsed: :data:`NODE_OPTIONS`, ``extra``, and with ``tls`` the TLS ones.

    Any other is refused with its name (and the hint of ``hints`` for it): a misspelt option must
    not be dropped silently. ``secret`` options are shown as ``***`` in errors.
    """
    known = {**NODE_OPTIONS, **extra, **(TLS_OPTIONS if tls else {})}
    options: dict[str, object] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise ValueError(f"option {name} is given twice")
        parser = known.get(name)
        if parser is None:
            if name in hints:
                raise ValueError(f"unknown option {name} ({hints[name]})")
            if name in TLS_OPTIONS:
                raise ValueError(f"option {name} needs TLS: the {tls_scheme}:// scheme")
            every = sorted({*NODE_OPTIONS, *extra, *TLS_OPTIONS})
            raise ValueError(f"unknown option {name} (known: {', '.join(every)})")
        try:
            options[name] = parser(value)
        except ValueError as exc:
            shown = "***" if name in secret else repr(value)
            raise ValueError(f"option {name}={shown}: {exc}") from None
    return options


def redact_multi_host(url: str) -> str:
    """``url`` with the password before the hosts and any ``*password`` option replaced by ``***``."""
    scheme, info, hosts, path, query = split_url(url)
    user, has_password, _ = info.partition(":")
    shown = f"{user}:***@" if has_password else f"{info}@" if info else ""
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "?" + urllib.parse.urlencode(
            [(name, "***" if name.lower().endswith("password") else value) for name, value in pairs], safe="*/"
        )
    return f"{scheme}://{shown}{hosts}{path}{query}"
