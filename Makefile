# The README's two commands: `make demo` and `make test`. Both create .venv and install the pinned set first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-isa test-shuffled lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/aif demo

# the style check (ruff, pinned) first: it takes a second
test: lint
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check aifeedback tests bench

# pytest exits 5 when -m selects no tests: no slow tests is not a failure
test-slow: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

# The tests marked `numerics` (floats against recorded values or across batch sizes and process counts) once more under
# the kernels of other CPUs, emulated here: oneDNN, MKL and ATen pick their kernels by these variables (an AVX2 CPU
# without AVX-512, such as AMD Zen 3, and an SSE4 one). Each set builds its own tiny models, as such a machine does.
ISA_AVX2 := ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
ISA_SSE41 := ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default
test-isa: $(STAMP)
	env -u AIF_TEST_CACHE $(ISA_AVX2) OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m 'numerics and not gpu'
	env -u AIF_TEST_CACHE $(ISA_SSE41) OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m 'numerics and not gpu'

# The default suite in a shuffled order (modules, and the tests in each); the header prints the seed that repeats it
# (`pytest --shuffle SEED`). SHUFFLE=N picks the seed.
SHUFFLE ?= random
test-shuffled: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q --shuffle $(SHUFFLE)

clean:
	rm -rf $(VENV) build *.egg-info
