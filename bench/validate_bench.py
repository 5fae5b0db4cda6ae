"""Benchmark: load + validate a generated 10,000-service x 10-endpoint directory.

Why this exists: issue 2 requires the whole configuration layer to handle a
large edge box (100 files, 10,000 services, 100,000 endpoints) in under 5 s on
a 2-core machine.  This script generates such a directory in a temp dir, runs
``load_dir`` a few times (cold, then a re-load with a warm ``ParseCache`` and
one changed file), prints a table of the phases and writes it to
``bench/results/validate.md``.  It measures; it never asserts a time.

Usage: python bench/validate_bench.py [--services N] [--endpoints N] [--files N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.config import ParseCache, load_dir  # noqa: E402


def _endpoint(k: int) -> str:
    return f"172.{16 + k // 65536 % 16}.{k // 256 % 256}.{k % 256}"


def service_doc(i: int, endpoints: int) -> str:
    vip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    eps = "\n".join(f"    - address: {_endpoint(i * endpoints + j + 1)}\n      weight: 1"
                    for j in range(endpoints))
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata:\n  name: svc-{i}\n"
            f"spec:\n  vip: {vip}\n  ports:\n    - port: 80\n      protocol: TCP\n      targetPort: 8080\n"
            f"  selection: rr\n  endpoints:\n{eps}\n")


def generate(root: Path, services: int, endpoints: int, files: int) -> None:
    per_file = -(-services // files)
    for f in range(files):
        docs = [service_doc(i, endpoints) for i in range(f * per_file, min(services, (f + 1) * per_file))]
        (root / f"services-{f:03d}.yaml").write_text("---\n".join(docs), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "validate.md"))
    args = ap.parse_args()

    load = os.getloadavg()  # other work on the box skews the numbers: say so
    rows: list[tuple[str, dict[str, float], int, int]] = []
    with tempfile.TemporaryDirectory(prefix="lbctl-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root, args.services, args.endpoints, args.files)
        gen = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.iterdir())
        for n in range(args.rounds):
            result = load_dir(root)
            assert result.valid, result.errors[:3]
            rows.append((f"cold #{n + 1}", dict(result.timings), len(result.resources), len(result.parsed)))
        cache = ParseCache()
        load_dir(root, cache=cache)
        time.sleep(0.01)
        changed = root / "services-000.yaml"
        changed.write_text(changed.read_text(encoding="utf-8").replace("weight: 1", "weight: 2", 1),
                           encoding="utf-8")
        result = load_dir(root, cache=cache)
        rows.append(("warm, 1 file changed", dict(result.timings), len(result.resources), len(result.parsed)))

    phases = ("discover", "read", "parse", "schema", "build", "semantic", "total")
    header = "| run | " + " | ".join(f"{p} s" for p in phases) + " | resources | files parsed |"
    lines = [header, "|" + "---|" * (len(phases) + 3)]
    for name, t, nres, nparsed in rows:
        lines.append(f"| {name} | " + " | ".join(f"{t.get(p, 0.0):.3f}" for p in phases) +
                     f" | {nres} | {nparsed} |")
    cold = [t["total"] for name, t, _, _ in rows if name.startswith("cold")]
    from importlib.metadata import version

    import jsonschema  # noqa: F401 - only for the version line
    import yaml
    env = (f"{args.services} services x {args.endpoints} endpoints in {args.files} files "
           f"({size / 1e6:.1f} MB, generated in {gen:.1f} s); Python {platform.python_version()}, "
           f"PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__}), "
           f"jsonschema {version('jsonschema')}, "
           f"{os.cpu_count()} CPUs, load average before the run {load[0]:.2f}")
    text = ("# lbctl validate benchmark\n\n" + env + "\n\n" + "\n".join(lines) +
            f"\n\nMedian cold total: {statistics.median(cold):.2f} s (target: < 5 s)\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
