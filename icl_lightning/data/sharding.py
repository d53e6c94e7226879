"""The DDP split: which contiguous share of a fixed set each rank evaluates."""


def shard(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` share of ``num_items`` owned by ``rank``.

    Shares differ in size by at most one item; a rank may own none when
    ``num_items < world_size``.
    """
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)
