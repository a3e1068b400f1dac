from data.sampler import IdentityBatchSampler


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_batches_hold_distinct_identities_and_cover_each_epoch():
    sampler = IdentityBatchSampler(47, 10, seed=3)
    batches = take(sampler, 8)  # 4 batches per epoch, last 7 identities dropped
    for epoch in (batches[:4], batches[4:]):
        ids = [i for batch in epoch for i, _ in batch]
        assert len(ids) == len(set(ids)) == 40
    assert [i for i, _ in batches[0]] != [i for i, _ in batches[4]]


def test_ranks_split_the_global_batch():
    whole = take(IdentityBatchSampler(30, 8, seed=1), 5)
    ranks = [take(IdentityBatchSampler(30, 8, seed=1, rank=r, world_size=2), 5) for r in range(2)]
    for t in range(5):
        assert ranks[0][t] + ranks[1][t] == whole[t]


def test_resume_continues_the_same_stream():
    full = take(IdentityBatchSampler(30, 6, seed=2), 12)
    resumed = take(IdentityBatchSampler(30, 6, seed=2, start_iteration=8), 5)
    assert resumed == full[7:]
    assert [e for batch in full for _, e in batch] == [t // 5 for t in range(12) for _ in range(6)]
