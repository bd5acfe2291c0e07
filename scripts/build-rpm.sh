#!/usr/bin/env bash
# Build the nexusd RPM from the checkout with rpmbuild; `make rpm` runs this.
# Arguments are passed on to rpmbuild (e.g. --without tests).
#
# The source tarball holds the files git tracks, as they are in the working
# tree (so uncommitted edits are built; in CI the two are the same).
# rpmbuild works in build/rpm/ and the packages land in dist/.
#
# Environment:
#   NEXUSD_RPM_CHECK=0     skip %check (the test suite run against the
#                          package's build root; on by default)
#   NEXUSD_RPM_OUT=DIR     where the packages go (default: dist)
#   NEXUSD_RPM_TOPDIR=DIR  rpmbuild's work folder (default: build/rpm)
#   NEXUSD_RPM_PYTHON=X.Y  dom0's Python version, when it differs from this
#                          machine's python3 (Qubes 4.3 dom0: 3.13); it
#                          decides the site-packages path and python(abi)
#   NEXUSD_RPM_PACKAGER=S  the Packager header (default: git's user.name and
#                          user.email; the spec leaves it to the builder)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

command -v rpmbuild >/dev/null || {
    echo "build-rpm: rpmbuild not found (Debian: apt-get install rpm)" >&2
    exit 1
}

# The spec builds and installs the wheel with the system's python3 (not the
# .venv's), whose path the installed scripts' #! lines then name.
{ /usr/bin/python3 -c 'import setuptools, wheel' && /usr/bin/python3 -m pip --version; } \
    >/dev/null 2>&1 || {
    echo "build-rpm: /usr/bin/python3 lacks pip, setuptools or wheel" \
        "(Debian: apt-get install python3-pip python3-setuptools" \
        "python3-wheel)" >&2
    exit 1
}

spec=rpm/nexusd.spec
version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
pkg_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' nexusd/__init__.py)
if [[ $version != "$pkg_version" ]]; then
    echo "build-rpm: $spec says $version, nexusd/__init__.py $pkg_version" >&2
    exit 1
fi

out=$(realpath -m "${NEXUSD_RPM_OUT:-dist}")
top=$(realpath -m "${NEXUSD_RPM_TOPDIR:-build/rpm}")
rm -rf "$top"
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS} "$out"

git ls-files -z \
    | tar --null --files-from=- --ignore-failed-read \
        --transform "s,^,nexusd-$version/,S" --owner=0 --group=0 \
        -czf "$top/SOURCES/nexusd-$version.tar.gz"

packager=${NEXUSD_RPM_PACKAGER:-}
if [[ -z $packager ]]; then
    name=$(git config user.name || true)
    email=$(git config user.email || true)
    packager="${name:-nexusd builder} <${email:-root@localhost}>"
fi

args=(--define "_topdir $top" --define "packager $packager" -ba "$spec")
# Outside an RPM-based system (Debian) the rpm database knows none of the
# build requirements, which come from Debian's packages and .venv instead.
if ! rpm -q rpm >/dev/null 2>&1; then
    args=(--nodeps "${args[@]}")
fi
if [[ -n ${NEXUSD_RPM_PYTHON:-} ]]; then
    [[ $NEXUSD_RPM_PYTHON =~ ^3\.[0-9]+$ ]] \
        || { echo "build-rpm: NEXUSD_RPM_PYTHON must be like 3.13" >&2; exit 1; }
    site=/usr/lib/python$NEXUSD_RPM_PYTHON/site-packages
    args=(--define "python3_sitelib $site" "${args[@]}")
fi
if [[ ${NEXUSD_RPM_CHECK:-1} == 0 ]]; then
    args=(--without tests "${args[@]}")
else
    [[ -x .venv/bin/python ]] \
        && args=(--define "check_python $repo/.venv/bin/python" "${args[@]}")
    [[ -d ../shared ]] \
        && args=(--define "nexusd_shared_dir $(realpath ../shared)" "${args[@]}")
fi

rpmbuild "${args[@]}" "$@"

while IFS= read -r -d '' built; do
    cp "$built" "$out/"
    echo "$out/${built##*/}"
done < <(find "$top/RPMS" "$top/SRPMS" -name '*.rpm' -print0)
