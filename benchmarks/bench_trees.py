"""The forward pass of two versions of the source, side by side.

    python benchmarks/bench_trees.py HEAD~1 HEAD          # tiny @224, batch 1 and 8, 2 threads
    python benchmarks/bench_trees.py main . --rounds 7     # "." is the working tree as it is
    python benchmarks/bench_trees.py HEAD . --backend numpy

For a change to the kernels (or, with ``--backend numpy``, to the NumPy ops): each revision is
exported (``git archive``) into a directory of its own (its own Numba cache), and the tiny's
forward pass runs in fresh processes from each in turn, alternating which goes first. Per process:
two warm-up passes, then the median of --reps passes at batch 1 and of a quarter as many at batch
8; reported: the medians over rounds, ms per image, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHILD = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import harness, convnext_np as cnp
assert cnp.__file__.startswith(sys.argv[1]), cnp.__file__
net = cnp.from_pretrained(harness.model_dir("tiny", 224), backend=sys.argv[3])
res = {}
for batch, reps in ((1, int(sys.argv[2])), (8, max(3, int(sys.argv[2]) // 4))):
    x = harness.pixels(batch, 224)
    net(x); net(x)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); net(x); ts.append(time.perf_counter() - t0)
    res[batch] = 1e3 * statistics.median(ts) / batch
print(json.dumps(res))
"""


def export(rev: str, into: Path) -> Path:
    if rev == ".":
        return harness.ROOT
    d = into / rev.replace("/", "_")
    d.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=harness.ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(d)], input=archive, check=True)
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs=2, help="git revisions ('.' = the working tree)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="forward passes per process at batch 1")
    ap.add_argument("--backend", choices=("numba", "numpy"), default="numba", help="the backend both revisions run")
    args = ap.parse_args(argv)
    print(f"{harness.machine()['cpu']}, {args.threads} threads, tiny @224, backend {args.backend!r}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in args.revs}
        runs = {rev: [] for rev in trees}
        for r in range(args.rounds):
            for rev in (args.revs if r % 2 else args.revs[::-1]):
                env = harness.thread_env(args.threads, PYTHONPATH=str(trees[rev]))
                out = subprocess.run([sys.executable, "-c", CHILD, str(trees[rev]), str(args.reps), args.backend],
                                     env=env, cwd=trees[rev], check=True, capture_output=True, text=True)
                runs[rev].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {rev: {b: statistics.median(r[b] for r in rs) for b in ("1", "8")} for rev, rs in runs.items()}
    a, b = args.revs
    print(f"\n| batch | {a} ms/image | {b} ms/image | {b} / {a} |\n|---|---|---|---|")
    for batch in ("1", "8"):
        print(f"| {batch} | {med[a][batch]:.2f} | {med[b][batch]:.2f} | {med[b][batch] / med[a][batch]:.3f} |")


if __name__ == "__main__":
    main()
