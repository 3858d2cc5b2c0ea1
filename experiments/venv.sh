#!/bin/sh
# Run a tool of the project's virtual environment: `sh experiments/venv.sh python -m experiments.train ...`.
#
# Why: DVC stage commands must not use a bare `python` (whatever comes first on PATH), but a
# relative `.venv/bin/python` breaks `dvc exp run --queue/--temp`, which run the stages in a copy
# of the repository under <project>/.dvc/tmp/exps/ that lacks the git-ignored .venv/. This finds
# the venv of the real project in both cases. MASKCL_VENV overrides it (a venv elsewhere).
set -eu
here=$(pwd -P)
case "$here" in
  */.dvc/tmp/*)
    root=${here%%/.dvc/tmp/*}
    # the copy also lacks the git-ignored Sacred file store that `maskcl report --runs runs/sacred`
    # reads (experiments/* already write to the project's absolute runs/sacred): show it the real one
    if [ ! -e runs ] && [ -d "$root/runs" ]; then ln -s "$root/runs" runs; fi
    ;;
  *) root=$here ;;
esac
venv=${MASKCL_VENV:-$root/.venv}
tool=${1:?usage: sh experiments/venv.sh TOOL [ARGS...]}
shift
if [ ! -x "$venv/bin/$tool" ]; then
  echo "experiments/venv.sh: $venv/bin/$tool not found; create the venv with 'make install' or set MASKCL_VENV" >&2
  exit 127
fi
exec "$venv/bin/$tool" "$@"
