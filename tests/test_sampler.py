import pytest

from data.sampler import IdentityBatchSampler

CLIP = dict(crop_samples=(40000, 80000), clip_samples=160000)


def make(num_identities, batch_size, **kwargs):
    return IdentityBatchSampler(num_identities, batch_size, **CLIP, **kwargs)


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_batches_hold_distinct_identities_and_cover_each_epoch():
    sampler = make(47, 10, seed=3)
    batches = take(sampler, 8)  # 4 batches per epoch, last 7 identities dropped
    for epoch in (batches[:4], batches[4:]):
        ids = [i for batch in epoch for i, *_ in batch]
        assert len(ids) == len(set(ids)) == 40
    assert [i for i, *_ in batches[0]] != [i for i, *_ in batches[4]]


def test_ranks_split_the_global_batch():
    whole = take(make(30, 8, seed=1), 5)
    ranks = [take(make(30, 8, seed=1, rank=r, world_size=2), 5) for r in range(2)]
    for t in range(5):
        assert ranks[0][t] + ranks[1][t] == whole[t]


def test_resume_continues_the_same_stream():
    full = take(make(30, 6, seed=2), 12)
    resumed = take(make(30, 6, seed=2, start_iteration=8), 5)
    assert resumed == full[7:]
    assert [e for batch in full for _, e, _ in batch] == [t // 5 for t in range(12) for _ in range(6)]


def test_clip_windows_are_shared_by_the_batch_and_within_range():
    sampler = make(30, 6, seed=4)
    lengths = set()
    for iteration in range(1, 60):
        batch = sampler.batch(iteration)
        windows = batch[0][2]
        assert all(item[2] == windows for item in batch)  # one window per clip for the whole batch
        for start, length in windows:
            assert 40000 <= length < 80000 and 0 <= start and start + length <= 160000
            lengths.add(length)
        assert windows == make(30, 6, seed=4).windows(iteration)  # a function of (seed, iteration)
    assert len(lengths) > 100  # the two clips draw their own lengths


def test_bad_crop_range_names_the_key():
    with pytest.raises(ValueError, match="training.crop_seconds"):
        IdentityBatchSampler(30, 6, crop_samples=(80000, 40000), clip_samples=160000)
