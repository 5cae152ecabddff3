"""The subscription index answers exactly as matching every pattern would, however it was built and pruned."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.sublist import SubList
from meshcore.topic import matches

TOKENS = st.sampled_from(["a", "b", "c", "orders", "eu"])
TOPICS = st.lists(TOKENS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.one_of(
    st.just(">"),
    st.lists(st.one_of(TOKENS, st.just("*")), min_size=1, max_size=4).flatmap(
        lambda segs: st.sampled_from([".".join(segs), ".".join([*segs, ">"])])
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    subs=st.lists(st.tuples(st.integers(0, 6), PATTERNS), max_size=25),
    removed=st.lists(st.integers(0, 24), max_size=10),
    topics=st.lists(TOPICS, min_size=1, max_size=8),
)
def test_matches_what_scanning_every_pattern_matches(
    subs: list[tuple[int, str]], removed: list[int], topics: list[str]
) -> None:
    index: SubList[int] = SubList(cache_max=3)  # a small cache, so that it also starts over
    held = set()
    for item, pattern in subs:
        index.insert(pattern, item)
        held.add((item, pattern))
    for topic in topics:  # answers cached before the removals must not outlive them
        index.match(topic)
    for k in removed:
        if k < len(subs):
            item, pattern = subs[k]
            index.remove(pattern, item)
            held.discard((item, pattern))
    assert index.size == len(held)
    for topic in topics:
        want = {item for item, pattern in held if matches(pattern, topic)}
        got = index.match(topic)
        assert set(got) == want and len(got) == len(want), (topic, held)


def test_each_subscriber_once_and_nothing_left_behind() -> None:
    index: SubList[str] = SubList()
    index.insert("orders.*", "s1")
    index.insert("orders.>", "s1")  # two patterns of one subscriber that both match
    index.insert(">", "s2")
    index.insert("orders.eu.paid", "s3")
    assert sorted(index.match("orders.eu")) == ["s1", "s2"]
    assert sorted(index.match("orders.eu.paid")) == ["s1", "s2", "s3"]
    assert index.match("billing") == ("s2",)
    for pattern, item in (("orders.*", "s1"), ("orders.>", "s1"), (">", "s2"), ("orders.eu.paid", "s3")):
        index.remove(pattern, item)
    index.remove("orders.*", "nobody")  # not there: nothing happens
    assert index.size == 0 and index.match("orders.eu.paid") == ()
    assert index._root.empty()  # every branch pruned
