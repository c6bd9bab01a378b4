"""Seeds: the range every command takes, and the one way a seed is derived from others.

A seed given by a user (``train --seed``, the sampling ``--seed``, ``interpolate --seeds``, ...)
is a whole number from 0 to :data:`SEED_MAX`, 2^63 - 1, so that it fits a signed 64-bit integer
wherever it is stored (config.json, tensor metadata). Seeds the code derives from it (a training
step's, an epoch's batch order, a second noise stream) go through :func:`derive_seed`, which keeps
them in the range ``torch.Generator.manual_seed`` takes. Nothing here touches torch.
"""

from __future__ import annotations

SEED_MAX = 2**63 - 1  # the largest seed a command takes
_SEED_SPAN = 2**64  # torch's seeds are unsigned 64-bit integers


def derive_seed(*terms: int) -> int:
    """The seed made of ``terms`` (a seed and the multiples of a step, an epoch, a rank, ... that
    set a stream apart): their sum, reduced mod 2^64 so that ``manual_seed`` takes it. A sum from
    0 to 2^64 - 1 is returned as it is, so the streams of every seed that fitted stay the same."""
    return sum(terms) % _SEED_SPAN


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``seed`` if it is a whole number from 0 to SEED_MAX; else a ValueError naming ``flag``."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{flag} must be between 0 and 2^63 - 1 = {SEED_MAX} (got {seed})")
    return seed
