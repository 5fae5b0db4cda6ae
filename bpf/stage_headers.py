#!/usr/bin/python3
# SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
"""stage_headers.py OUTDIR MULTIARCH PACKAGE...: the only include tree the datapath sees.

Why this exists: the datapath is compiled with ``-nostdinc`` against OUTDIR alone,
and OUTDIR holds symlinks to exactly the headers that the named Debian packages
install (``dpkg -L``), with ``/usr/include/MULTIARCH`` and ``/usr/include`` folded
into one tree as the compiler would see them.  A header that comes from a
package the top-level Makefile does not list is missing here, so the build fails
on the developer's machine exactly as it would on a bare one.  (A shell loop of
``mkdir``/``ln`` took 3 s for ~950 headers; this takes ~0.1 s.)
"""

import os
import re
import shutil
import subprocess
import sys

OTHER_ARCH = re.compile(r"^[a-z0-9_]+-linux-gnu[a-z0-9_]*/")


def main() -> int:
    out, multiarch, packages = sys.argv[1], sys.argv[2], sys.argv[3:]
    listed = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True)
    # dpkg says on stderr which listed packages are not installed; the build then
    # fails on the first header it cannot find, which names the file.
    for line in listed.stderr.splitlines():
        print("stage_headers: " + line, file=sys.stderr)
    arch_dir = f"/usr/include/{multiarch}/"
    shutil.rmtree(out, ignore_errors=True)
    count = 0
    for path in listed.stdout.splitlines():
        if path.startswith(arch_dir):
            rel = path[len(arch_dir):]
        elif path.startswith("/usr/include/"):
            rel = path[len("/usr/include/"):]
            if OTHER_ARCH.match(rel):
                continue
        else:
            continue
        if not os.path.isfile(path):
            continue
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.lexists(dest):
            os.symlink(path, dest)
            count += 1
    print(f"stage_headers: {count} headers from {len(packages)} listed packages into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
