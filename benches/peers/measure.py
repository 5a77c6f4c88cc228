#!/usr/bin/env python3
"""Runs a command and reports its wall time and peak RSS on stderr's last line:

    measure.py CMD ARGS...  →  @@measure {"seconds": s, "maxrss_mib": m, "code": c}

Linux charges a child, at exec, with the peak RSS of the address space it was forked
from. Forked straight from the harness (hundreds of MiB of reference arrays), every
child would report at least the harness's size; forked from this small process it
reports its own.
"""
import json
import os
import subprocess
import sys
import time

t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:])
_, status, ru = os.wait4(p.pid, 0)
secs = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
print("@@measure " + json.dumps({"seconds": secs, "maxrss_mib": ru.ru_maxrss / 1024.0, "code": code}),
      file=sys.stderr, flush=True)
sys.exit(code)
