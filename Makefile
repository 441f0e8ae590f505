# Two commands on a fresh machine (no ROS needed): `make demo` and `make test`.
# Both create the environment first (scripts/bootstrap_env.sh; idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test clean

env:
	@bash scripts/bootstrap_env.sh

demo: env
	$(PY) -m sirenpose_ros.tools.demo --out out/demo

test: env
	$(PY) -m pytest test -q

clean:
	rm -rf out build install log .pytest_cache
