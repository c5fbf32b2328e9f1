#!/usr/bin/env bash
# Builds gantry-infer as a statically linked binary and packages it as a
# FROM-scratch Docker image (default tag gantry-infer:dev; override with
# IMAGE=...). Needs no registry and no musl target.
#
# Static linking uses glibc's static libraries (libc6-dev) through
# -C target-feature=+crt-static. The explicit --target keeps these RUSTFLAGS
# away from build scripts and proc macros and puts the output under
# target/x86_64-unknown-linux-gnu/, so the host build cache is not rebuilt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
image="${IMAGE:-gantry-infer:dev}"
target=x86_64-unknown-linux-gnu
profile=infer-image

cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked -p gantry-infer --bin gantry-infer --profile "$profile" --target "$target"
bin="${CARGO_TARGET_DIR:-$root/target}/$target/$profile/gantry-infer"

# A scratch image has no dynamic loader and no libc: refuse anything dynamic.
info="$(file -b "$bin")"
case "$info" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "build-image: $bin is not static: $info" >&2; exit 1 ;;
esac
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q "statically linked"; then
    echo "build-image: ldd lists shared libraries for $bin:" >&2
    ldd "$bin" >&2
    exit 1
fi
# The binary must work with nothing around it: no environment, no files.
env -i "$bin" --check-model

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/gantry-infer"
cp "$here/Dockerfile" "$context/Dockerfile"
docker build --quiet --tag "$image" "$context" >/dev/null

size="$(docker image inspect --format '{{.Size}}' "$image")"
echo "build-image: $image ($((size / 1024)) KiB; binary: $info)"
