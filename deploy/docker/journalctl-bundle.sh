#!/bin/sh
# Copies journalctl, and every shared library it loads that the runtime base
# (distroless cc: glibc and libgcc) does not have, into the directory $1,
# under their canonical paths (e.g. usr/lib/x86_64-linux-gnu/libzstd.so.1,
# usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so), ready for
# `COPY --from=journal /out/ /`. Used by the Dockerfile's `journal` stage;
# run on the same Debian release as the runtime base (bookworm).
set -eu
out="$1"
bin="$(command -v journalctl)"
bin="$(readlink -f "$bin")"

copy() { # copy FILE DEST_PATH
    mkdir -p "$out$(dirname "$2")"
    cp -L "$1" "$out$2"
}

copy "$bin" "$bin"
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
    name="$(basename "$lib")"
    case "$name" in
        # In the runtime base already.
        libc.so.* | libm.so.* | libgcc_s.so.* | libpthread.so.* | libdl.so.* | librt.so.*) continue ;;
    esac
    dir="$(readlink -f "$(dirname "$lib")")"
    copy "$lib" "$dir/$name"
done
