#!/usr/bin/env bash
# Checks the contract in protos/ with buf (rules in buf.yaml): `buf lint`, then
# `buf breaking` against protos/ of the previous commit, so a wire-breaking
# change cannot land unnoticed. CI runs it on a fresh clone of main, where
# HEAD~1 is the commit before the one under test.
#
# Usage: scripts/buf_check.sh
#   BUF=/path/to/buf    the buf binary (default: .local/buf/, from scripts/install.sh, else PATH)
#   BUF_AGAINST=REF     the git revision to compare with (default: HEAD~1; a pull request's CI
#                       may pass origin/main)
#
# The breaking check is skipped, with a message saying why, when there is
# nothing to compare with: no previous commit, a shallow clone that lacks it,
# or no protos/ in it. Exit status: 0 when every check that ran passed.
set -euo pipefail
cd "$(dirname "$0")/.."

buf=${BUF:-}
if [ -z "$buf" ]; then
  if [ -x .local/buf/node_modules/.bin/buf ]; then
    buf=.local/buf/node_modules/.bin/buf
  else
    buf=$(command -v buf || true)
  fi
fi
if [ -z "$buf" ] || [ ! -x "$buf" ]; then
  echo "buf-check: buf not found; run scripts/install.sh (make install) or set BUF" >&2
  exit 2
fi

"$buf" lint
echo "buf-check: lint passed"

against=${BUF_AGAINST:-HEAD~1}
skip() {
  echo "buf-check: breaking check skipped: $1"
  exit 0
}
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || skip "not a git checkout"
if ! commit=$(git rev-parse -q --verify "$against^{commit}"); then
  # A shallow clone (CI's default fetch depth 1) has HEAD but not its parent.
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    skip "$against is not in this shallow clone; fetch it (git fetch --deepen=1) to compare"
  fi
  skip "no commit $against to compare with (a first commit?)"
fi
git cat-file -e "$commit:protos" 2>/dev/null || skip "no protos/ in $against ($commit)"

# The commit id resolved above rather than $against, so that buf compares with
# exactly the commit checked for protos/, and the message names it.
"$buf" breaking protos --against ".git#ref=$commit,subdir=protos"
echo "buf-check: no breaking change against $against ($commit)"
