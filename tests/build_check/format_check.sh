#!/usr/bin/env bash
# Fails, naming the files and the first differences, when a tracked C++ file is not in the style of
# .clang-format (Google, 100 columns). Fix with tools/format.sh.
#   format_check.sh SOURCE_DIR [CLANG_FORMAT]
set -euo pipefail
source_dir="$1"
clang_format="${2:-clang-format-14}"
command -v "$clang_format" >/dev/null ||
  { echo "format_check: $clang_format not found (deploy/install-deps.sh test installs it)"; exit 1; }
cd "$source_dir"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cc' '*.h')
else  # a source tree without git: every C++ file outside build folders
  mapfile -t files < <(find . -path './build*' -prune -o \( -name '*.cc' -o -name '*.h' \) -print)
fi
[ "${#files[@]}" -gt 0 ] || { echo "format_check: no C++ files under $source_dir"; exit 1; }
if "$clang_format" --style=file --dry-run --Werror "${files[@]}" >/dev/null 2>&1; then
  echo "format_check: ${#files[@]} files formatted"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$clang_format" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
echo "format_check: ${#bad[@]} of ${#files[@]} files are not formatted (run tools/format.sh):"
printf '  %s\n' "${bad[@]}"
"$clang_format" --style=file --dry-run "${bad[0]}" 2>&1 | head -n 20
exit 1
