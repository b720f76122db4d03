#!/usr/bin/env bash
# Install the current build into a scratch prefix, then build and run a
# consumer through find_package(ktls) and another through pkg-config.
# usage: check_install.sh SOURCE_DIR BUILD_DIR WORK_DIR tools|no-tools
# (tools: the build has the tools, so ktls-probe must be installed too)
set -euo pipefail
src=$1 build=$2 work=$3 tools=$4
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"

consumer=$src/tests/install/consumer
cmake -S "$consumer" -B "$work/cmake-consumer" -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/configure.log"
cmake --build "$work/cmake-consumer" >"$work/build.log"
"$work/cmake-consumer/consumer"
"$work/cmake-consumer/asio_consumer"

pc_dir=$(dirname "$(find "$work/prefix" -name ktls.pc | head -n1)")
flags=$(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs ktls)
# shellcheck disable=SC2086  # flags are words on purpose
c++ -std=c++20 "$consumer/main.cc" -o "$work/pkgconfig-consumer" $flags
"$work/pkgconfig-consumer"
if [[ $tools == tools ]]; then
    test -x "$work/prefix/bin/ktls-probe"
fi
echo "ok: find_package(ktls) and pkg-config ktls both build and run"
