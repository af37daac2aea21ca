"""Every seed of a run is derived from (run seed, teacher step, dataset, student, ...), so that a unit redone
after a kill gives the same result."""


def derive_seed(*parts: int) -> int:
    value = 17
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**31 - 1)
    return value
