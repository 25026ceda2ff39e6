#!/usr/bin/env bash
# Seeds the fuzz corpora: the KDL spec inputs and the example workflows for
# `parse` and `roundtrip`, the real webhook payloads for `delivery` (each
# prefixed by a selector byte: even GitHub, odd Forgejo; the rest picks the
# event name).
set -euo pipefail
cd "$(dirname "$0")"
for target in parse roundtrip; do
    mkdir -p "corpus/$target"
    cp ../solstice-kdl/tests/kdl-spec-tests/v2/test_cases/input/*.kdl ../solstice-kdl/tests/kdl-spec-tests/v1/test_cases/input/*.kdl \
       ../solstice-kdl/workflows/*.kdl ../solstice-kdl/tests/broken/*.kdl "corpus/$target/" 2>/dev/null || true
done
mkdir -p corpus/delivery
n=0
for f in ../solstice-forge/tests/fixtures/github/*/*.json; do
    { printf '\x00'; cat "$f"; } > "corpus/delivery/github-push-$n"
    { printf '\x02'; cat "$f"; } > "corpus/delivery/github-pr-$n"
    n=$((n + 1))
done
for f in ../solstice-forge/tests/fixtures/forgejo/*/*.json; do
    { printf '\x01'; cat "$f"; } > "corpus/delivery/forgejo-push-$n"
    { printf '\x03'; cat "$f"; } > "corpus/delivery/forgejo-pr-$n"
    n=$((n + 1))
done
