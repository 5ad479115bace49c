# Sourced by the study scripts: PY is the Python that runs mimkit (PYTHON when set, else the repository's .venv made
# by `make setup`, else python or python3 on PATH) and M the mimkit command line.
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif command -v python >/dev/null; then
  PY=python
else
  PY=python3
fi
M="$PY -m mimkit"
# LANES=N: a comparison's cells N at a time, each with its share of the threads (`mimkit compare --lanes`; 1 by default)
LANES_ARG=(--lanes "${LANES:-1}")
