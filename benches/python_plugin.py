#!/usr/bin/env python3
"""The Python package's two hot paths, timed inside the interpreter.

Run by `cargo bench --bench throughput` (`RECLAG_BENCH_ONLY=python`), which alternates
it with the same work in Rust and prints the ratios; the interpreter's start and the
imports are not timed. Prints one JSON object per call:

    python benches/python_plugin.py count TABLE MODEL
        pl.scan_parquet(TABLE).filter(reclag.polars.is_ood("embedding", m, group="label"))
          .select(pl.len()) on the streaming engine: {"seconds", "rows"}
    python benches/python_plugin.py floor TABLE MODEL
        the same scan with a filter that only needs the embedding decoded
        (``is_not_null() & label >= 0``): Polars' reader alone: {"seconds", "rows"}
    python benches/python_plugin.py frame TABLE MODEL
        df.filter(is_ood(...)).height on the table read into a DataFrame beforehand
        (not timed): the expression without the reader: {"seconds", "rows"}
    python benches/python_plugin.py score TABLE MODEL
        model.score(table, group="label", keep_columns=[]) on the table read into
        memory beforehand (not timed): {"seconds", "ood"}
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    mode, table, model = sys.argv[1:4]
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    import reclag
    import reclag.polars as rp

    m = reclag.load(model)
    if mode == "count":
        t0 = time.perf_counter()
        n = (
            pl.scan_parquet(table)
            .filter(rp.is_ood("embedding", m, group="label"))
            .select(pl.len())
            .collect(engine="streaming")
            .item()
        )
        print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n}))
    elif mode == "floor":
        t0 = time.perf_counter()
        n = (
            pl.scan_parquet(table)
            .filter(pl.col("embedding").is_not_null() & (pl.col("label") >= 0))
            .select(pl.len())
            .collect(engine="streaming")
            .item()
        )
        print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n}))
    elif mode == "frame":
        df = pl.read_parquet(table)
        t0 = time.perf_counter()
        n = df.filter(rp.is_ood("embedding", m, group="label")).height
        print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n}))
    elif mode == "score":
        t = pq.read_table(table)
        t0 = time.perf_counter()
        out = m.score(t, group="label", keep_columns=[])
        secs = time.perf_counter() - t0
        ood = pa.compute.sum(out.column("reclag_is_ood").cast(pa.int64())).as_py()
        print(json.dumps({"seconds": secs, "ood": ood}))
    else:
        sys.exit(f"unknown mode {mode!r}: expected count, floor, frame or score")


if __name__ == "__main__":
    main()
