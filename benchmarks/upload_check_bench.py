"""What the bounded upload check costs, and what hostile uploads do to a running server.

    .venv/bin/python benchmarks/upload_check_bench.py --uploads 15

One `fleetcast server` (check limits 3 s and 1 GiB). First `--uploads` tiny models are
pushed one at a time (each checked in a forkserver child); then, in the same run, the
same check is timed in this process without a child, for the ratio. Last, eight hostile
uploads (4 endless `Loop`s, 3 `ConstantOfShape` of 1 GiB, 1 golden zip bomb) go in
parallel while the server's RSS is sampled. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.test_hostile_uploads import BOUNDED, RssWatch, rss_bytes, upload  # noqa: E402
from tests.support import hostile, models  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402


def in_process_check_s(path: Path) -> float:
    from fleetcast.server import registry

    started = time.perf_counter()
    session = registry._session(path)
    specs = registry._specs(session.get_inputs(), "input")
    session.run(None, registry.make_inputs(specs, "0" * 64))
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uploads", type=int, default=15)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    server = ServerProcess(root / "server", extra_args=BOUNDED).start()
    try:
        child_s, local_s = [], []
        for i in range(args.uploads):
            path = models.write(models.tiny_classifier(500 + i), root / f"m{i}.onnx")
            fields: dict[str, bytes | str] = {"model": path.read_bytes()}
            started = time.perf_counter()
            status, doc = upload(server, "bench", fields)
            child_s.append(time.perf_counter() - started)
            assert status == 201, doc
            local_s.append(in_process_check_s(path))
        assert server.pid is not None
        baseline = rss_bytes(server.pid)
        watch = RssWatch(server.pid)
        watch.start()
        loop, huge = models.to_bytes(hostile.endless_loop()), models.to_bytes(hostile.huge_constant())
        hostile_fields = [{"model": loop}] * 4 + [{"model": huge}] * 3 + [
            {"model": models.to_bytes(models.tiny_classifier(9)), "golden": hostile.npz_bomb("input")}]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda f: upload(server, "hostile", f), hostile_fields))
        hostile_s = time.perf_counter() - started
        watch.done.set()
        watch.join()
        print(json.dumps({
            "median_upload_with_child_check_s": round(statistics.median(child_s), 4),
            "median_same_check_in_process_s": round(statistics.median(local_s), 4),
            "hostile_statuses": sorted(s for s, _ in results),
            "hostile_all_refused_s": round(hostile_s, 2),
            "server_rss_baseline_mib": round(baseline / 2**20, 1),
            "server_rss_peak_mib": round(watch.peak / 2**20, 1),
        }, indent=2))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
