"""Reading typed settings from an environment mapping, shared by every service's config.

Precedence everywhere: an explicit argument, then the environment, then the default.
"""

from __future__ import annotations

from collections.abc import Mapping

MESHSCOPE_REDIS_URL = "MESHSCOPE_REDIS_URL"
"""Redis/Valkey URL; ``REDIS_URL`` is read when this is unset."""
REDIS_URL = "REDIS_URL"
"""Fallback Redis URL, the common name most tools set."""
MESHSCOPE_FLOW_STREAM = "MESHSCOPE_FLOW_STREAM"
"""Redis stream that receives flow records (default ``meshscope:flows``)."""
MESHSCOPE_FLOW_SHARDS = "MESHSCOPE_FLOW_SHARDS"
"""Keys the flow stream is sharded over (default 1); each relay writes one, collectors read them all."""
MESHSCOPE_REGION_STORES = "MESHSCOPE_REGION_STORES"
"""Every region's store, ``region=redis://host:port/0,...``: what the dashboard (and a collector that runs
inside it) reads; unset: the one store of MESHSCOPE_REDIS_URL / REDIS_URL, holding every region."""
STORE_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "valkey+cluster")


def whole_number(text: str, minimum: int, maximum: int) -> int | None:
    """``text`` as a whole number within bounds, or None: ASCII digits only.

    ``str.isdigit`` also says yes to "²" and "٣", which ``int()`` then refuses or reads
    as another digit, and ``int()`` alone takes "1_000" and " 7"; input from outside is
    held to ``[0-9]+`` (at most 18 digits, so no huge-integer conversion is ever tried).
    """
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


class SettingError(ValueError):
    """An environment variable whose value cannot be used."""


def get_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def get_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingError(f"{name}={value} is below the minimum {minimum}")
    return value


def get_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingError(f"{name}={value} is below the minimum {minimum}")
    return value


def get_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={raw!r} is not true or false")


def get_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = get_str(env, name, default)
    if value not in choices:
        raise SettingError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def get_optional_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    return None if raw is None or raw == "" else get_float(env, name, 0.0, minimum=-1e9)


def get_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def get_region_urls(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``region=redis://...,region=...`` as (region, URL) pairs: region ids checked, each region once."""
    from meshcore.names import is_region_id

    out: list[tuple[str, str]] = []
    for item in get_list(env, name):
        region, sep, url = item.partition("=")
        region, url = region.strip(), url.strip()
        if not sep or not is_region_id(region):
            raise SettingError(f"{name}: {item!r} is not region=URL with a region id such as aws:us-east-1")
        scheme = url.partition("://")[0]
        if scheme not in STORE_SCHEMES or "://" not in url:
            raise SettingError(f"{name}: the store of {region} must be a {'/'.join(STORE_SCHEMES)} URL, not {url!r}")
        if any(r == region for r, _ in out):
            raise SettingError(f"{name}: {region} is listed twice")
        out.append((region, url))
    return tuple(out)


def get_map_float(env: Mapping[str, str], name: str) -> dict[str, float]:
    """``key=value,key=value`` as a dict of floats."""
    out: dict[str, float] = {}
    for item in get_list(env, name):
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise SettingError(f"{name}: {item!r} is not key=value")
        try:
            out[key] = float(value)
        except ValueError:
            raise SettingError(f"{name}: {value!r} is not a number") from None
    return out
