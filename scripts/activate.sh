# Sourced by the long-running experiment scripts (scripts/recommend.sh, experiments/findings.sh,
# experiments/dapo_seeds.sh): use the project's .venv when it exists (they run for hours and must not
# reinstall under a running job),
# else build it with scripts/env.sh, the README's set-up.
# shellcheck shell=bash
if [ -x "$ROOT/.venv/bin/python" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
else
  # shellcheck disable=SC1091
  . "$ROOT/scripts/env.sh"
fi
