#!/usr/bin/env bash
# Freeze hotswapd into DEST: one directory that runs with nothing from the base image
# (no Python, no libcap, not even glibc), for `COPY --from=… DEST DEST`.
#
#   docker/freeze/build.sh DEST        # e.g. /opt/hotswapd; run from anywhere
#
# DEST is where the directory will live in the image: the bundled dynamic loader is
# named by absolute path in the executable's ELF header (PT_INTERP cannot be
# relative), so the directory works there and only there.
# Needs: python3 with its shared libpython and headers (python3-dev), gcc and
# libcap-dev for python-prctl, patchelf, binutils. Dependencies come from the lock
# files, so two builds a week apart freeze the same versions.
set -euo pipefail
DEST=${1:?usage: build.sh DEST}
[[ $DEST == /* ]] || { echo "build.sh: DEST must be absolute: $DEST" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${FREEZE_WORK:-$(mktemp -d)}
trap '[[ -n ${FREEZE_WORK:-} ]] || rm -rf "$WORK"' EXIT

# 1. A venv with exactly the locked versions. Build tools first, so that the sdists
#    (python-prctl, pyinotify, hotswapd itself) build against locked ones too.
"$PYTHON" -m venv "$WORK/venv"
pip=("$WORK/venv/bin/python" -m pip install --quiet --no-cache-dir --no-warn-script-location)
"${pip[@]}" -r <(grep -E '^(setuptools|wheel)==' "$HERE/requirements.lock")
"${pip[@]}" --no-build-isolation -r "$REPO/requirements.lock" -r "$HERE/requirements.lock"
"${pip[@]}" --no-build-isolation --no-deps "$REPO"

# 2. Freeze (one-dir).
"$WORK/venv/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$WORK/dist" --workpath "$WORK/build" "$HERE/hotswapd.spec"
out=$WORK/dist/hotswapd
lib=$out/_internal

# 3. Bundle what PyInstaller leaves to the system: glibc and the dynamic loader.
#    Every library any ELF file in the bundle needs (ldd: the whole closure) that is
#    not there yet, copied under its soname.
while IFS= read -r path; do
    name=$(basename "$path")
    [[ -e $lib/$name ]] || install -m 0755 "$(readlink -f "$path")" "$lib/$name"
done < <(find "$out" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
         xargs -0 -n1 ldd 2>/dev/null | awk '$3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' |
         sort -u)
loader=$(basename "$(find "$lib" -maxdepth 1 -name 'ld-linux*.so*' | head -1)")
[[ -n $loader ]] || { echo "build.sh: no dynamic loader found to bundle" >&2; exit 1; }
strip --strip-unneeded "$lib"/lib*.so* 2>/dev/null || true

# 4. The executable asks for the bundled loader and finds its first libraries (libc,
#    libz, before the bootloader sets LD_LIBRARY_PATH) in the bundle. Both by absolute
#    path: $ORIGIN would need /proc mounted, and the loader's path is absolute anyway.
#    Extension modules lose any build-machine RUNPATH.
patchelf --set-interpreter "$DEST/_internal/$loader" --set-rpath "$DEST/_internal" "$out/hotswapd"
find "$lib" -name '*.so' -exec sh -c 'for f; do
    patchelf --print-rpath "$f" | grep -q . && patchelf --remove-rpath "$f"; done; true' sh {} +

# 5. Install, then prove it runs in an empty root: only DEST, no /lib, no /usr.
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
cp -a "$out" "$DEST"
if [[ $(id -u) == 0 && ${FREEZE_CHECK:-1} == 1 ]]; then
    root=$WORK/emptyroot
    mkdir -p "$root$(dirname "$DEST")"
    cp -a "$DEST" "$root$DEST"
    chroot "$root" "$DEST/hotswapd" --version
fi
du -sh "$DEST"
