#!/usr/bin/env bash
# Builds the .deb and .rpm packages of gantry-coordinator, gantry-agent and
# gantryctl into target/packages/.
#
#   packaging/build.sh                      # release profile (fat LTO; slow)
#   PROFILE=package-ci packaging/build.sh   # release code without LTO (CI)
#   DEB_REVISION=2 RPM_RELEASE=2 NO_BUILD=1 packaging/build.sh   # repackage
#
# Needs cargo-deb and cargo-generate-rpm (packaging/ci-test.sh installs the
# pinned versions). The man pages and completions come from the binaries just
# built (their hidden --generate), so this builds for the host architecture.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
DEB_REVISION=${DEB_REVISION:-1}
RPM_RELEASE=${RPM_RELEASE:-1}
OUT=${OUT:-target/packages}
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN_DIR="$TARGET_DIR/$PROFILE"
[ "$PROFILE" = dev ] && BIN_DIR="$TARGET_DIR/debug"
GEN="$BIN_DIR/gen"

if [ -z "${NO_BUILD:-}" ]; then
    echo "build.sh: building the binaries (profile $PROFILE)"
    cargo build --locked --profile "$PROFILE" -p gantry-coordinator -p gantry-agent -p gantryctl --bins
fi

echo "build.sh: man pages and completions -> $GEN"
rm -rf "$GEN" && mkdir -p "$GEN"
gen() { # binary, how to ask it (prefix args), man section
    local bin=$1 section=$3
    # shellcheck disable=SC2086
    "$BIN_DIR/$bin" $2 man | gzip -9n >"$GEN/$bin.$section.gz"
    "$BIN_DIR/$bin" $2 complete-bash >"$GEN/$bin.bash"
    "$BIN_DIR/$bin" $2 complete-zsh >"$GEN/_$bin"
    "$BIN_DIR/$bin" $2 complete-fish >"$GEN/$bin.fish"
}
gen gantry-coordinator --generate 8
gen gantry-agent --generate 8
gen gantryctl generate 1

mkdir -p "$OUT"
rm -f "$OUT"/gantry-coordinator[_-]*.{deb,rpm} "$OUT"/gantry-agent[_-]*.{deb,rpm} "$OUT"/gantryctl[_-]*.{deb,rpm}
for pkg_dir in gantry-coordinator:coordinator gantry-agent:agent gantryctl:ctl; do
    pkg=${pkg_dir%%:*} dir=${pkg_dir#*:}
    echo "build.sh: $pkg.deb"
    cargo deb --no-build --profile "$PROFILE" -p "$pkg" --deb-revision "$DEB_REVISION" -o "$OUT/" >/dev/null
    echo "build.sh: $pkg.rpm"
    # generate-rpm's -p takes the crate's directory.
    cargo generate-rpm --profile "$PROFILE" -p "$dir" -o "$OUT/" \
        --metadata-overwrite "packaging/rpm/$pkg.toml" --set-metadata "release = \"$RPM_RELEASE\""
done
ls -l "$OUT"
