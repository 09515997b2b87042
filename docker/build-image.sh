#!/usr/bin/env bash
# Builds the images of the Docker example locally, from nothing (FROM
# scratch; no registry, nothing pulled):
#   wayfinder:local       the wayfinder binary, the shared libraries it links
#                         (glibc), docker/wayfinder.toml as its default config
#   wayfinder-demo:local  docker/demo.rs as a static binary (plain rustc)
#
# usage: docker/build-image.sh [--binary PATH] [--tag TAG] [--demo-tag TAG] [--no-demo]
#   --binary   use this wayfinder binary instead of `cargo build --release`
#              (e.g. target/debug/wayfinder; it is stripped into the image)
# Prints the two image ids on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
tag="wayfinder:local"
demo_tag="wayfinder-demo:local"
demo=1
while (($#)); do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --demo-tag) demo_tag="$2"; shift 2 ;;
        --no-demo) demo=0; shift ;;
        *) echo "usage: $0 [--binary PATH] [--tag TAG] [--demo-tag TAG] [--no-demo]" >&2; exit 2 ;;
    esac
done

if [[ -z "$binary" ]]; then
    cargo build --release >&2
    binary="target/release/wayfinder"
fi
[[ -x "$binary" ]] || { echo "$0: $binary is not an executable" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

# wayfinder: the binary and, for its dynamic linking, the loader and the
# libraries ldd names (glibc 2.34+ has the files and dns name services
# inside libc, so host names such as a compose service's resolve).
root="$ctx/rootfs"
mkdir -p "$root/etc/wayfinder" "$root/tmp"
chmod 1777 "$root/tmp"
strip -o "$root/wayfinder" "$binary"
ldd "$binary" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    cp --parents -L "$lib" "$root/"
done
cp docker/wayfinder.toml "$root/etc/wayfinder/wayfinder.toml"
printf 'root:x:0:0:root:/:/wayfinder\nnobody:x:65534:65534:nobody:/:/wayfinder\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
cp docker/Dockerfile "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" 2> >(grep -v -i 'buildkit\|deprecated\|buildx\|legacy builder\|environment-variable\|^ *$' >&2)

if ((demo)); then
    dctx="$ctx/demo"
    mkdir -p "$dctx"
    rustc --edition 2021 -C opt-level=2 -C panic=abort -C strip=symbols \
        -C target-feature=+crt-static docker/demo.rs -o "$dctx/wayfinder-demo"
    cp docker/Dockerfile.demo "$dctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$demo_tag" "$dctx" 2> >(grep -v -i 'buildkit\|deprecated\|buildx\|legacy builder\|environment-variable\|^ *$' >&2)
fi
