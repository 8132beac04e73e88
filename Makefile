# The two commands of the README. Each sets up everything it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-kernels setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, pinned: a looser spec may pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/editr1 demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# The tests that compare runs summing floats in other orders (processes, sharding, caches, resumes), again
# under torch's lower CPU kernel levels: their tolerances must hold on any x86-64 CPU, not only this one's.
KERNEL_TESTS := tests/test_distributed.py tests/test_fsdp.py tests/test_conditions_cache.py tests/test_kill_and_resume.py
test-kernels: $(STAMP)
	for level in default avx2; do \
		echo "ATEN_CPU_CAPABILITY=$$level"; \
		ATEN_CPU_CAPABILITY=$$level $(BIN)/python -m pytest -q $(KERNEL_TESTS) $(ARGS) || exit 1; \
	done

clean:
	rm -rf $(VENV) runs
