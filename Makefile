# loc3r_ros: the two commands of the README, and a few helpers.
#   make demo   set everything up (first run: a few minutes) and run the main job on the embedded default
#   make test   set everything up and run linters + the whole test suite (what CI runs)
.PHONY: setup demo test lint bench clean

setup:
	scripts/setup_env.sh

demo: setup
	scripts/demo.sh

test: setup
	scripts/run_tests.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf build install log .stamps .deps env.sh log_colcon_build.txt
