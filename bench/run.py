"""Run every measurement for both servers and the machine's limits in one go; write bench/results/.

    bench/run.sh            (installs what it needs, then runs this)
    .venv/bin/python -m bench.run [--big-mib 1024] [--small-mib 20] [--streams 10,100,1000] [--repeats 3]

Throughputs and latencies are the median of --repeats runs (every run is kept in latest.json).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from . import measure
from .report import write_results
from .stack import running_stack, versions

SERVERS = {"old": "old_url", "new": "new_url"}


def log(message: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {message}", flush=True)


def guarded(label: str, fn, *args) -> Any:
    """One measurement failing (the old server cannot do some) is a result, not the end of the run."""
    log(label)
    try:
        result = fn(*args)
    except Exception as exc:  # recorded in the table with its reason
        result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    log(f"{label}: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-mib", type=int, default=20)
    parser.add_argument("--streams", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput and latency measure")
    args = parser.parse_args()
    n = args.repeats
    counts = tuple(int(n) for n in args.streams.split(","))
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "versions": versions(),
        "big_mib": args.big_mib,
        "small_mib": args.small_mib,
        "repeats": n,
    }
    with tempfile.TemporaryDirectory(prefix="inferserver-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        big, small = work / "big.nii.gz", work / "small.nii.gz"
        measure.make_volume(big, args.big_mib)
        measure.make_volume(small, args.small_mib)
        with running_stack(work) as stack:
            results["raw"] = guarded("raw loopback and disk", measure.repeated, n, measure.raw_references, stack, big)
            results["docker"] = guarded("plain docker run", measure.docker_reference, stack, big)
            results["engine"] = guarded(
                "the engine alone (curl)", measure.repeated, n, measure.engine_reference, stack, small, big
            )
            results["staging"] = guarded(
                "inferserver archive staging", measure.repeated, n, measure.archive_staging, stack, big
            )
            for name, attr in SERVERS.items():
                url = getattr(stack, attr)
                server: dict[str, Any] = {}
                server["e2e_small"] = guarded(
                    f"{name}: ablinfer {args.small_mib} MiB", measure.ablinfer_e2e, url, small, work / "out"
                )
                server["flow_small"] = guarded(
                    f"{name}: flow {args.small_mib} MiB", measure.repeated, n, measure.flow, stack, name, url, small
                )
                server["e2e_big"] = guarded(
                    f"{name}: ablinfer {args.big_mib} MiB", measure.ablinfer_e2e, url, big, work / "out"
                )
                server["flow_big"] = guarded(
                    f"{name}: flow {args.big_mib} MiB", measure.repeated, n, measure.flow, stack, name, url, big
                )
                server["status"] = {
                    c: guarded(f"{name}: status load c={c}", measure.status_load, url, c) for c in (50, 200)
                }
                server["streams"] = guarded(f"{name}: log streams", measure.log_streams, stack, url, small, counts)
                results[name] = server
            results["mount"] = {
                key: guarded(
                    f"mount: flow {mib} MiB", measure.repeated, n, measure.flow, stack, "mount", stack.mount_url, source
                )
                for key, mib, source in (("flow_small", args.small_mib, small), ("flow_big", args.big_mib, big))
            }
    results["seconds"] = time.monotonic() - started
    paths = write_results(results)
    log(f"done in {results['seconds']:.0f} s: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
