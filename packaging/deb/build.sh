#!/bin/bash
# packaging/deb/build.sh OUT [VERSION]: build lbctl_<version>_<arch>.deb into OUT (`make deb`).
#
# Why this exists: the package is built the way Debian builds one (dpkg-buildpackage,
# debhelper, pybuild) from the files of this checkout only -- tracked and new ones, never
# build outputs, the venv or reconciler/datapath/ -- with packaging/deb/debian/ as the
# source package's debian/. VERSION (e.g. 0.1.0+1) adds a changelog entry to the staged
# copy only, for a rebuild that upgrades an installed one (make deb-test does). The tools
# named in $DEB_PACKAGES and the Build-Depends of debian/control are installed when
# missing (apt-get build-dep reads debian/control: one list). lintian must report no
# error and no warning.
set -euo pipefail
# Debian's tools and Debian's python3 only (a python3 earlier in PATH, e.g. pyenv's, must
# not build the package).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

out=$(realpath -m "${1:?usage: build.sh OUT [VERSION]}")
version=${2:-}
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
src=$out/src/lbctl

missing=""
for p in ${DEB_PACKAGES:-}; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "make deb: installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

rm -rf "$out/src"
mkdir -p "$src"
(cd "$top" && git ls-files -z --cached --others --exclude-standard -- . ':!:packaging/deb/debian' \
    | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf -) | tar -xf - -C "$src"
cp -r "$top/packaging/deb/debian" "$src/debian"
# DEB_SOURCE_OVERLAY=DIR: files laid over the staged source (same relative paths), for a
# test build of another datapath layout; never set by `make deb`.
if [ -n "${DEB_SOURCE_OVERLAY:-}" ]; then
    cp -r "$DEB_SOURCE_OVERLAY"/. "$src/"
fi

upstream=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$src/reconciler/__init__.py")
changelog=$(cd "$src" && dpkg-parsechangelog -S Version)
case "$changelog" in
    "$upstream"|"$upstream"[+~-]*) ;;
    *) echo "make deb: debian/changelog is at $changelog but reconciler/__init__.py says $upstream:" \
            "add a changelog entry" >&2; exit 1;;
esac
if [ -n "$version" ]; then
    { printf 'lbctl (%s) bookworm; urgency=medium\n\n  * Rebuild as %s.\n\n' "$version" "$version"
      printf ' -- %s  %s\n\n' "$(cd "$src" && dpkg-parsechangelog -S Maintainer)" "$(date -R)"
      cat "$src/debian/changelog"; } > "$src/debian/changelog.new"
    mv "$src/debian/changelog.new" "$src/debian/changelog"
fi

if ! (cd "$src" && dpkg-checkbuilddeps >/dev/null 2>&1); then
    echo "make deb: installing the Build-Depends of debian/control"
    DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends "$src"
fi

(cd "$src" && dpkg-buildpackage -b -us -uc) > "$out/build.log" 2>&1 || {
    tail -40 "$out/build.log"; echo "make deb: dpkg-buildpackage failed (log: $out/build.log)" >&2; exit 1; }
version=$(cd "$src" && dpkg-parsechangelog -S Version)
deb=$(ls "$out/src/lbctl_${version}_"*.deb)
mv "$out"/src/lbctl_"${version}"_* "$out/" 2>/dev/null || true
mv "$out"/src/lbctl-dbgsym_* "$out/" 2>/dev/null || true
deb=$out/$(basename "$deb")
echo "make deb: $deb"
lintian -I --fail-on error,warning --tag-display-limit 0 "$deb"
echo "make deb: lintian: no errors, no warnings"
