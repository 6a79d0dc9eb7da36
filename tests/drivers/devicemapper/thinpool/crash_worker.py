"""Mutates a pool forever with random operations; the crash test SIGKILLs it.

Device 1 and its snapshot 2 exist beforehand; device 2 is never written or deleted,
so whatever moment the kill lands at, device 2 must still read its original pattern.
"""

import random
import sys

from cowstore.drivers.devicemapper.thinpool import PoolFull, ThinPool


def main() -> None:
    meta, data, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    pool = ThinPool.open(meta, data, min_free_pct=0)
    bs = pool.block_size
    print("ready", flush=True)
    while True:
        ids = [dev.dev_id for dev in pool.devices()]
        mutable = [i for i in ids if i != 2]
        op = rng.random()
        try:
            if op < 0.55 and mutable:
                dev = pool.device(rng.choice(mutable))
                offset = rng.randrange(0, dev.size - 1)
                length = min(rng.choice([512, 4096, bs, 3 * bs + 17]), dev.size - offset)
                pool.write(dev.dev_id, offset, bytes([rng.randrange(256)]) * length)
            elif op < 0.65 and mutable:
                dev = pool.device(rng.choice(mutable))
                offset = rng.randrange(0, dev.size // bs) * bs
                pool.discard(dev.dev_id, offset, min(rng.randrange(1, 5) * bs, dev.size - offset))
            elif op < 0.75:
                new = max(ids) + 1
                pool.create_snap(new, rng.choice(ids))
            elif op < 0.82 and len(mutable) > 2:
                pool.delete(rng.choice([i for i in mutable if i != 1]))
            elif op < 0.87:
                pool.create_thin(max(ids) + 1, rng.randrange(1, 64) * bs)
            else:
                pool.flush()
        except PoolFull:
            victims = [i for i in mutable if i != 1]
            if victims:
                pool.delete(rng.choice(victims))


if __name__ == "__main__":
    main()
