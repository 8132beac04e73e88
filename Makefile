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

# The tests that compare runs summing floats in other orders (processes, sharding, caches, resumes), again at
# lower CPU instruction levels: torch's own kernels (ATEN_CPU_CAPABILITY), oneDNN's and MKL's matrix products.
# Their tolerances must hold on any x86-64 CPU, not only this one's.
KERNEL_TESTS := tests/test_distributed.py tests/test_fsdp.py tests/test_family_launches.py tests/test_conditions_cache.py \
	tests/test_kill_and_resume.py
KERNEL_LEVELS := "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE" \
	"ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
test-kernels: $(STAMP)
	for level in $(KERNEL_LEVELS); do \
		echo "$$level"; \
		env $$level $(BIN)/python -m pytest -q $(KERNEL_TESTS) $(ARGS) || exit 1; \
	done

clean:
	rm -rf $(VENV) runs
