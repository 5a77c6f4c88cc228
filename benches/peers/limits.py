#!/usr/bin/env python3
"""Limits measured beside the peers, each as its own process:

    limits.py read FILE          read the file through (page cache): bytes/s
    limits.py membw FILE M K     memory bandwidth: one large copy, GB/s
    limits.py sgemm FILE M K     the sgemm of the scoring shapes: K × ((N/K) × d) · (d × M)
"""
import json
import os
import sys
import time


def main():
    what, path = sys.argv[1], sys.argv[2]
    if what == "read":
        buf = bytearray(8 << 20)
        total = 0
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                total += n
        print(json.dumps({"bytes": total, "seconds": time.perf_counter() - t0}))
        return
    import numpy as np
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path)
    n = md.metadata.num_rows
    d = md.schema_arrow.field("embedding").type.list_size
    m, k = int(sys.argv[3]), int(sys.argv[4])
    if what == "membw":
        a = np.ones(1 << 28, dtype=np.uint8)  # 256 MiB, far beyond the caches
        b = np.empty_like(a)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            np.copyto(b, a)
            best = min(best, time.perf_counter() - t0)
        # A copy reads and writes every byte.
        print(json.dumps({"gb_per_s": 2 * a.nbytes / best / 1e9}))
    elif what == "sgemm":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n // k, d), dtype=np.float32)
        xi = rng.standard_normal((m, d), dtype=np.float32)
        x @ xi.T  # warm the BLAS threads
        t0 = time.perf_counter()
        for _ in range(k):
            x @ xi.T
        print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
