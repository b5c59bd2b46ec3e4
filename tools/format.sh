#!/usr/bin/env bash
# Formats every tracked .cc/.h in place in the style of .clang-format (what format_check tests).
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -z '*.cc' '*.h' | xargs -0 "${CLANG_FORMAT:-clang-format-14}" --style=file -i
