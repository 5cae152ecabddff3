"""Every key a region's store holds for the relays and collectors, named in one place.

A store is one Valkey/Redis server or a cluster. A cluster places a key by the
CRC16 slot of its hash tag (the text inside the first ``{...}``, or the whole
key when it has none), and a script or a transaction may only touch keys of one
slot. So the keys are tagged by what must stay together:

    {<region>}              the region's own small state, written together
        meshscope:applied:{R}            what was applied from each origin (hash)
        meshscope:dedup:{R}:<relay>      the keys of accepted events (stream)
        meshscope:outmeta:{R}            each link store's epoch/next/floor (hash)
        meshscope:groups:{R}             the durable groups (hash)
        meshscope:commit:{R}:<writer>    a writer's commit counter
    {<region>:<group>}      meshscope:group:{R:G}          one durable group's stream
    {<region>><dst>}        meshscope:out:{R>D}            the link store for one destination
    {<i>}                   <flow stream>:{<i>}            flow shard i (with more than one shard)
    {governance}            meshscope:{governance}:current|version|versions|log (one transaction)
    {alerts}                meshscope:{alerts}:state|leader   (the alert evaluator's, one script)

Every key starts with ``meshscope:``, so an ACL pattern ``~meshscope:*`` still covers them all.

A commit spans tags (an event lands in a group stream, a link store, the flow
shard and the region's state at once): on a cluster it is split per tag, and
each part has its own counter, ``meshscope:commit:{<tag>}:<writer>``
(``router.committer``). On a single server one script takes it whole, as before.

The flow stream is sharded over ``shards`` keys; a writer always writes the
same shard (``flow_shard``: a hash of its name), and collectors read every
shard. With one shard (the default) the stream keeps its plain name.

Stores written before the keys had tags (``LEGACY``) are moved once, on a
single server, by ``RENAMENX`` when a relay starts (``router.storemigration``);
the plain flow stream is read by the collectors alongside the shards while it
holds entries.

Pure: no I/O.
"""

from __future__ import annotations

import zlib

GOVERNANCE_TAG = "meshscope:{governance}"
GOVERNANCE_CURRENT = f"{GOVERNANCE_TAG}:current"
"""The newest governance document (JSON)."""
GOVERNANCE_VERSION = f"{GOVERNANCE_TAG}:version"
"""Its version id alone, for the cheap periodic check."""
GOVERNANCE_VERSIONS = f"{GOVERNANCE_TAG}:versions"
"""Hash: version number -> that document, the whole history."""
GOVERNANCE_LOG = f"{GOVERNANCE_TAG}:log"
"""Stream: one entry per change (version, author, time, summary)."""

ALERTS_STATE = "meshscope:{alerts}:state"
"""The alert evaluator's alert states (hash), saved by one script with its lease: one tag."""
ALERTS_LEADER = "meshscope:{alerts}:leader"
"""The alert evaluator's lease."""
LEGACY_ALERTS_STATE = "meshscope:alerts:state"
"""Where alert states were kept before the tag: read while the tagged hash is empty, removed once saved."""

COMMIT_PREFIX = "meshscope:commit:"
MANIFESTS_PREFIX = "meshscope:collector:inflight:"

LEGACY_GOVERNANCE = {
    "meshscope:governance:current": GOVERNANCE_CURRENT,
    "meshscope:governance:version": GOVERNANCE_VERSION,
    "meshscope:governance:versions": GOVERNANCE_VERSIONS,
    "meshscope:governance:log": GOVERNANCE_LOG,
}
"""Governance keys before they had a tag -> now."""


def hash_tag(key: str) -> str:
    """What a cluster hashes for ``key``: the text of its first non-empty ``{...}``, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def tagged(tag: str) -> str:
    """``tag`` in braces, so a key holding it hashes like ``tag`` (a key without braces hashes whole)."""
    return "{" + tag + "}"


def region_tag(region: str) -> str:
    return tagged(region)


def applied(region: str) -> str:
    return f"meshscope:applied:{tagged(region)}"


def dedup(region: str, relay: str) -> str:
    return f"meshscope:dedup:{tagged(region)}:{relay}"


def outmeta(region: str) -> str:
    return f"meshscope:outmeta:{tagged(region)}"


def outbound(region: str, dst: str) -> str:
    return f"meshscope:out:{tagged(f'{region}>{dst}')}"


def groups(region: str) -> str:
    return f"meshscope:groups:{tagged(region)}"


def group_stream(region: str, group: str) -> str:
    return f"meshscope:group:{tagged(f'{region}:{group}')}"


def siblings(region: str) -> str:
    """The stream a region's relay workers hand each other events through (in the region's slot)."""
    return f"meshscope:siblings:{tagged(region)}"


def workers(region: str) -> str:
    """The heartbeats of a region's relay workers."""
    return f"meshscope:workers:{tagged(region)}"


def commit_counter(tag: str, writer: str) -> str:
    """The commit counter of ``writer`` for keys hashing on ``tag`` (a key's ``hash_tag``)."""
    return f"{COMMIT_PREFIX}{tagged(tag)}:{writer}"


def flow_shards(base: str, shards: int) -> list[str]:
    """The keys of a flow stream sharded ``shards`` ways; one shard is the stream itself."""
    if shards <= 1:
        return [base]
    return [f"{base}:{tagged(str(i))}" for i in range(shards)]


def flow_shard(base: str, shards: int, writer: str) -> str:
    """The shard ``writer`` writes: the same one at every start (a stable hash of its name)."""
    keys = flow_shards(base, shards)
    return keys[zlib.crc32(writer.encode()) % len(keys)]


def flow_streams_read(base: str, shards: int) -> list[str]:
    """What collectors read: every shard, and the plain stream too when sharded (entries written before)."""
    keys = flow_shards(base, shards)
    return keys if shards <= 1 else [*keys, base]


def manifests(stream: str) -> str:
    """The collectors' in-flight batch manifests of ``stream``, in its slot (the claim script reads both)."""
    return MANIFESTS_PREFIX + tagged(hash_tag(stream))


LEGACY_MANIFESTS = "meshscope:collector:inflight"
"""Where manifests were kept before they had a slot of their stream's: read until empty."""


def legacy_region_keys(region: str, relay: str) -> dict[str, str]:
    """The region's own keys before they had tags -> now (link stores and group streams: ``legacy_*``)."""
    return {
        f"meshscope:applied:{region}": applied(region),
        f"meshscope:dedup:{region}:{relay}": dedup(region, relay),
        f"meshscope:outmeta:{region}": outmeta(region),
        f"meshscope:groups:{region}": groups(region),
    }


def legacy_outbound(region: str, dst: str) -> tuple[str, str]:
    return f"meshscope:out:{region}:{dst}", outbound(region, dst)


def legacy_group_stream(region: str, group: str) -> tuple[str, str]:
    return f"meshscope:group:{region}:{group}", group_stream(region, group)
