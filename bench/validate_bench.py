"""Benchmark: load + validate a generated 10,000-service x 10-endpoint directory.

Why this exists: the configuration layer sits on every hot path -- ``lbctl
plan``/``apply`` (issue 4: a no-op plan under 2 s end to end at 10k x 10, of
which IPAM + compile + live read + diff take ~0.3-0.8 s) and the watch daemon
(issue 5: a one-endpoint change live within 100 ms of the debounce).  This
script generates such a directory (100 files) in a temp dir and measures:

1. cold: ``load_dir`` in this process without a cache (every file parsed,
   schema-checked, built, every semantic check run);
2. warm: ``load_dir`` with a warm ``ParseCache`` after one file (100 services)
   changed, as the watch daemon does it;
3. CLI: a fresh ``python -c`` process loading through the parse cache
   persisted in a state dir (``load_dir_persisted``), as ``lbctl plan``
   does, with no file changed since the last run (wall time, interpreter
   start and imports included), and the same after one file changed (which
   also re-writes the cache);

prints medians of ``--rounds`` rounds with the load average, and writes
``bench/results/validate.md``.  ``--code DIR`` imports ``reconciler`` from
another checkout (e.g. ``git archive`` of an older commit) for before/after
numbers; the CLI rows need ``load_dir_persisted`` and are skipped without it.
It measures; it never asserts a time.

Usage: python bench/validate_bench.py [--services N] [--endpoints N] [--files N] [--rounds N] [--code DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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


def _edit(root: Path, n: int) -> None:
    """Change one endpoint's weight in the first file (another endpoint each round)."""
    changed = root / "services-000.yaml"
    text = changed.read_text(encoding="utf-8")
    changed.write_text(text.replace("weight: 1\n", f"weight: {n + 2}\n", 1), encoding="utf-8")


_CLI = """
import sys, time
t0 = time.perf_counter()
from reconciler.config import load_dir_persisted
r = load_dir_persisted(sys.argv[1], sys.argv[2])
assert r.valid
print(len(r.parsed), r.timings["total"], time.perf_counter() - t0)
"""


def _cli_run(code: Path, root: Path, state: Path) -> tuple[float, int, float]:
    """(wall s, files parsed, in-process total s) of a fresh process loading through the persisted cache."""
    env = dict(os.environ, PYTHONPATH=str(code))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CLI, str(root), str(state)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return time.perf_counter() - t0, int(out[0]), float(out[1])


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def main() -> int:  # noqa: C901 - a script: measure, then print
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--code", default=str(REPO), help="directory to import reconciler from")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "validate.md"))
    args = ap.parse_args()
    code = Path(args.code).resolve()
    sys.path.insert(0, str(code))
    import reconciler.config as config

    loads: list[float] = []
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    cli_same: list[tuple[float, int, float]] = []
    cli_edit: list[tuple[float, int, float]] = []
    persisted = hasattr(config, "load_dir_persisted")
    with tempfile.TemporaryDirectory(prefix="lbctl-bench-") as tmp:
        root, state = Path(tmp) / "conf", Path(tmp) / "state"
        root.mkdir()
        state.mkdir()
        t0 = time.perf_counter()
        generate(root, args.services, args.endpoints, args.files)
        gen = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.iterdir())
        config.load_dir(root)  # warm up imports and compiled schemas
        cache = config.ParseCache()
        config.load_dir(root, cache=cache)
        if persisted:
            _cli_run(code, root, state)  # writes the persisted cache
        for n in range(args.rounds):
            loads.append(os.getloadavg()[0])
            result = config.load_dir(root)
            assert result.valid, result.errors[:3]
            cold.append(dict(result.timings))
            _edit(root, n)
            result = config.load_dir(root, cache=cache)
            assert result.valid and len(result.parsed) == 1, result.parsed
            warm.append(dict(result.timings))
            if persisted:
                cli_edit.append(_cli_run(code, root, state))  # one file changed since the last run
                cli_same.append(_cli_run(code, root, state))  # nothing changed

    phases = ("discover", "read", "parse", "schema", "build", "semantic", "total")
    lines = [f"| run (median of {args.rounds}) | " + " | ".join(f"{p} ms" for p in phases) + " |",
             "|---|" + "---:|" * len(phases)]
    per_file = -(-args.services // args.files)
    for name, rows in (("cold, no cache", cold),
                       (f"warm ParseCache, 1 file ({per_file} services) changed", warm)):
        lines.append(f"| {name} | " + " | ".join(f"{_median(rows, p) * 1000:.1f}" for p in phases) + " |")
    cli_lines = []
    if persisted:
        cli_lines = ["| fresh process, persisted cache in the state dir | wall s (start + imports + load) | "
                     "load_dir total s | files parsed |", "|---|---:|---:|---:|"]
        for name, runs in (("no file changed since the last run", cli_same),
                           ("1 file changed (re-parsed, cache re-written)", cli_edit)):
            cli_lines.append(f"| {name} | {statistics.median(r[0] for r in runs):.2f} | "
                             f"{statistics.median(r[2] for r in runs):.3f} | {runs[0][1]} |")

    from importlib.metadata import version

    import yaml
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = (f"{now} on {platform.node()}: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
           f"Python {platform.python_version()}, "
           f"PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__}), "
           f"jsonschema {version('jsonschema')}; code from {code}.\n\n"
           f"{args.services} services x {args.endpoints} endpoints in {args.files} files "
           f"({size / 1e6:.1f} MB, generated in {gen:.1f} s). 1-minute load average at the start of each "
           f"round: {', '.join(f'{x:.2f}' for x in loads)} (median {statistics.median(loads):.2f}).")
    text = ("# lbctl validate benchmark\n\n" + env + "\n\n" + "\n".join(lines) + "\n" +
            ("\n" + "\n".join(cli_lines) + "\n" if cli_lines else "") +
            f"\n`python bench/validate_bench.py --rounds {args.rounds}`; in-process rows are "
            "`LoadResult.timings` (total includes the digest).\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
