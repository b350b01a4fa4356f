"""``ChannelSpace.union`` keeps a huge union's pairs once each: the classes are the same as with
every copy kept, and the stored pairs are the distinct ones (RetinaNet's head: 10.9 M → 4,095)."""
from __future__ import annotations

import numpy as np

from slimify.analysis import space as space_module
from slimify.analysis.groups import connected_labels
from slimify.analysis.space import FIXED, ChannelSpace


def _spread_union(space: ChannelSpace, channels: np.ndarray, positions: int) -> None:
    """A label of ``channels`` tiled over ``positions`` (anchors x classes reshaped with the
    spatial dims), each row tied to its first element, as ``RuleContext.channel_ids`` does."""
    rows = np.tile(channels.reshape(4, -1), (1, positions))
    space.union(rows[:, :1], rows)


def test_a_huge_union_keeps_each_pair_once_and_the_same_classes(monkeypatch) -> None:
    space = ChannelSpace()
    channels = space.new_var(64, "conv")
    _spread_union(space, channels, 20_000)  # 1.28 M pairs, 60 distinct (a != b)
    a, b = space.pairs()
    assert a.size == 60 and len(set(zip(a.tolist(), b.tolist()))) == 60
    kept = ChannelSpace()
    kept.new_var(64, "conv")
    monkeypatch.setattr(space_module, "_DISTINCT_PAIRS_ABOVE", 1 << 40)  # every copy kept
    _spread_union(kept, channels, 20_000)
    assert kept.pairs()[0].size == 1_280_000 - 4 * 20_000  # the copies it did keep: a != b only
    assert np.array_equal(connected_labels(space.size, *space.pairs()), connected_labels(kept.size, *kept.pairs()))


def test_a_huge_union_with_the_fixed_channel_fixes_its_partners() -> None:
    space = ChannelSpace()
    ids = space.new_var(8, "conv")
    label = np.tile(np.concatenate([[FIXED], ids[:3]]), 100_000)
    space.union(label[:1], label)
    fixed = np.concatenate([f for f, _ in space.fixes])
    assert set(fixed.tolist()) == set(ids[:3].tolist())


def test_a_large_seen_label_is_kept_as_its_distinct_ids() -> None:
    """Large labels are deduplicated (by a mask when they are as large as the space): the ids that
    ``find_groups`` marks seen are the label's, each once."""
    space = ChannelSpace()
    ids = space.new_var(1000, "conv")
    space.mark_seen(np.tile(ids[::3], 50))  # 16,700 ids, larger than the space
    space.mark_seen(np.tile(ids[1:5], 2000))  # 8,000 ids, larger than the space
    space.new_var(100_000, "big")
    space.mark_seen(np.tile(ids[:7], 1000))  # 7,000 ids, small against the space: sorted
    got = [s.tolist() for s in space.seen]
    assert got == [ids[::3].tolist(), ids[1:5].tolist(), ids[:7].tolist()]


def test_the_kept_pairs_are_exactly_the_distinct_ones() -> None:
    """Whether each ``b`` has one partner (found without a sort) or several (sorted), the stored
    pairs are the set of distinct (a, b) pairs with a != b: nothing joined or dropped."""
    rng = np.random.default_rng(0)
    for partners in (1, 3):
        space = ChannelSpace()
        ids = space.new_var(5000, "conv")
        b = rng.choice(ids, 400_000)
        a = ids[(b * 7 + rng.integers(0, partners, b.size)) % ids.size]
        space.union(a, b)
        got = set(zip(*(p.tolist() for p in space.pairs())))
        want = {(x, y) for x, y in zip(a.tolist(), b.tolist()) if x != y}
        assert got == want and len(space.pairs()[0]) == len(want)
