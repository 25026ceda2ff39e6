#!/usr/bin/env bash
# Seeds both fuzz corpora from the KDL spec inputs and the example workflows.
set -euo pipefail
cd "$(dirname "$0")"
for target in parse roundtrip; do
    mkdir -p "corpus/$target"
    cp ../solstice-kdl/tests/kdl-spec-tests/v2/test_cases/input/*.kdl ../solstice-kdl/tests/kdl-spec-tests/v1/test_cases/input/*.kdl \
       ../solstice-kdl/workflows/*.kdl ../solstice-kdl/tests/broken/*.kdl "corpus/$target/" 2>/dev/null || true
done
