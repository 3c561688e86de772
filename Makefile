# tlm.c — `make help` lists the targets. Generated files go under dev/build/ (git-ignored).
# gcc unless you name one (make CC=clang, or CC=clang in the environment); `CC ?= gcc` would
# never apply, since make predefines CC=cc
ifeq ($(origin CC),default)
CC = gcc
endif
CFLAGS ?= -O3 -march=native
# -fno-math-errno: sqrtf sets no errno, so the loops that call it (AdamW) vectorize
CFLAGS += -std=c11 -Wall -Wextra -fno-math-errno
OPENMP ?= -fopenmp
LDLIBS = -lm
PYTHON ?= python3
BUILD = dev/build
RUNS = dev/runs
# the program around the method, #included by train_tlm.c (dev/README.md: the layout)
TLMC = $(wildcard dev/tlmc/*.h)

.PHONY: all help test data data-mix run portable clean bench compare-llmc test-mutants test-asan \
        fuzz ablation ablation-quick FORCE

all: train_tlm test_tlm

help:
	@echo 'make targets:'
	@echo '  train_tlm       the trainer (the default goal builds it and test_tlm)'
	@echo '  train_tlm_mpi   the trainer, data parallel over MPI ranks (mpicc; README: More than one machine)'
	@echo '  run             the default run: train_tlm on the Brown Corpus as bytes (fetches it once),'
	@echo '                  its log and checkpoint in $(RUNS)/default.jsonl, .ckpt'
	@echo '  test            build and run the tests (gradient checks, float tests, the scripts'"'"' errors)'
	@echo '  test_tlm        build the test binary only'
	@echo '  test-asan       the tests and a short training run under ASan + UBSan'
	@echo '  test-mutants    break the backward pass line by line: the tests must catch every one'
	@echo '  fuzz            libFuzzer targets for the loaders and the command line (FUZZ_SECONDS each)'
	@echo '  data            the Brown Corpus as byte tokens and as GPT-2 tokens, in data/'
	@echo '  data-mix        five corpora as byte tokens (24M, for GRID=tokens), in data/'
	@echo '  ablation        the classroom experiment (GRID=taper|groups|ratios|depth|tokens|memory,'
	@echo '                  default taper; depth, tokens: the taper against depth and training'
	@echo '                  length, ~2 h each on 2 cores; memory: the memories'"'"' own controls);'
	@echo '                  every run a row of runs.csv in its output directory'
	@echo '  ablation-quick  the same, tiny and quick (results in $(RUNS)/)'
	@echo '  bench           training steps and matmuls at the benchmark shapes (BENCH_THREADS)'
	@echo '  dev/bench_tlm   build the benchmark only'
	@echo '  compare-llmc    our benchmark beside llm.c'"'"'s CPU trainer (clones llm.c into dev/cache)'
	@echo '  portable        build without OpenMP and -march=native (plain C11, one thread)'
	@echo '  clean           remove the binaries and $(BUILD)/'
	@echo '  help            this list'

# the compiler and flags of the last build: when they change (make portable, then make),
# the binaries are rebuilt even though the sources are older than them
$(BUILD)/build-flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(OPENMP)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(OPENMP)' > $@

train_tlm: train_tlm.c $(TLMC) $(BUILD)/build-flags
	$(CC) $(CFLAGS) $(OPENMP) $< $(LDLIBS) -o $@

# one binary, two precisions: test_tlm.c compiled in double (gradient checks) and in float
test_tlm: test_tlm.c train_tlm.c $(TLMC) $(BUILD)/build-flags
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) -DTLM_DOUBLE -c test_tlm.c -o $(BUILD)/test_tlm_double.o
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) -c test_tlm.c -o $(BUILD)/test_tlm_float.o
	$(CC) $(CFLAGS) $(OPENMP) $(BUILD)/test_tlm_float.o $(BUILD)/test_tlm_double.o $(LDLIBS) -o $@

test: train_tlm test_tlm
	./test_tlm
	bash dev/test_scripts.sh
	bash dev/test_mpi.sh

# the build for machines without OpenMP or -march=native: plain C11, one thread
portable:
	$(MAKE) all CFLAGS="-O2 -Wno-unknown-pragmas" OPENMP=

# the Brown Corpus as bytes (the default data) and as GPT-2 BPE tokens
data: data/brown_byte_train.bin data/brown_gpt2_train.bin data/gpt2_encoder.bin

data/brown_byte_train.bin:
	$(PYTHON) dev/prepare_data.py --corpus brown --tokenizer byte

data/brown_gpt2_train.bin:
	$(PYTHON) dev/prepare_data.py --corpus brown --tokenizer gpt2

# five corpora as bytes, 24.3M training tokens: the ablation's tokens grid trains on them
MIX = brown+sotu+austen+mobydick+web
data-mix: data/$(MIX)_byte_train.bin

data/$(MIX)_byte_train.bin:
	$(PYTHON) dev/prepare_data.py --corpus $(MIX) --tokenizer byte

# the GPT-2 prompt encoder for --sample (a data/ made before it existed lacks it)
data/gpt2_encoder.bin:
	$(PYTHON) dev/prepare_data.py --tokenizer-only

# the default run needs the byte shards only; its log and checkpoint go to $(RUNS)/default.*
run: train_tlm data/brown_byte_train.bin
	@mkdir -p $(RUNS)
	rm -f $(RUNS)/default.jsonl
	./train_tlm --log $(RUNS)/default.jsonl --save $(RUNS)/default.ckpt
	@echo 'plot it:     $(PYTHON) dev/plot_runs.py $(RUNS)/default.jsonl -o $(RUNS)/default.svg'
	@echo 'sample it:   ./train_tlm --load $(RUNS)/default.ckpt --sample --prompt "The "'

# the classroom experiment: uniform vs cosine vs reverse taper for every architecture
# (dev/ablation.py -h); GRID = taper | groups | ratios | depth | tokens | memory (the tokens
# grid trains on the five-corpus mix, the others on Brown); ABLATION_ARGS e.g.
# "-j 4 --seeds 3" or "--data dev/results/grid_depth/runs.csv" (go on from committed rows).
# Its runs go to $(RUNS)/ablation[_GRID][_quick] (an --out in ABLATION_ARGS wins).
GRID ?= taper
ABLATION_DATA = $(if $(filter tokens,$(GRID)),data/$(MIX)_byte_train.bin,data/brown_byte_train.bin)
ablation: train_tlm $(ABLATION_DATA)
	$(PYTHON) dev/ablation.py --grid $(GRID) $(ABLATION_ARGS)

ablation-quick: train_tlm $(ABLATION_DATA)
	$(PYTHON) dev/ablation.py --grid $(GRID) --quick $(ABLATION_ARGS)

clean:
	rm -f train_tlm train_tlm_mpi test_tlm train_tlm_asan test_tlm_asan dev/bench_tlm *.o .build-flags
	rm -rf $(BUILD)

# a benchmark, not a test: full training steps and the matmul at the model's shapes
dev/bench_tlm: dev/bench_tlm.c train_tlm.c $(TLMC) $(BUILD)/build-flags
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) $< $(LDLIBS) -o $@

BENCH_THREADS ?= 1,2
bench: dev/bench_tlm
	./dev/bench_tlm --threads $(BENCH_THREADS)

# our benchmark beside llm.c's CPU trainer, in turn on this machine (clones llm.c into dev/cache)
compare-llmc:
	bash dev/compare_llmc.sh

# every deliberately broken backward must make the tests fail
test-mutants: train_tlm
	bash dev/mutation_test.sh

# the tests and a short training run under AddressSanitizer and UndefinedBehaviorSanitizer.
# detect_leaks=0 for the test binary only: its error tests longjmp out of die() (an exit in
# the real program) and so leave half-built models behind on purpose.
SANITIZE = -O2 -march=native -g -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=all
ASAN_CC = $(CC) $(SANITIZE) -std=c11 -Wall -Wno-unused-function $(OPENMP)
test-asan: test_tlm.c train_tlm.c $(TLMC)
	@mkdir -p $(BUILD)
	$(ASAN_CC) train_tlm.c $(LDLIBS) -o $(BUILD)/train_tlm_asan
	$(ASAN_CC) -DTLM_DOUBLE -c test_tlm.c -o $(BUILD)/test_tlm_asan_double.o
	$(ASAN_CC) -c test_tlm.c -o $(BUILD)/test_tlm_asan_float.o
	$(CC) $(SANITIZE) $(OPENMP) $(BUILD)/test_tlm_asan_float.o $(BUILD)/test_tlm_asan_double.o \
	    $(LDLIBS) -o $(BUILD)/test_tlm_asan
	ASAN_OPTIONS=detect_leaks=0 TLM_TRAINER=$(BUILD)/train_tlm_asan $(BUILD)/test_tlm_asan
	bash dev/sanitized_run.sh $(BUILD)/train_tlm_asan

# libFuzzer targets for the shard, checkpoint and tokenizer loaders and the command line
# (clang and libclang-rt-14-dev): each runs FUZZ_SECONDS; see dev/fuzz/README.md
FUZZ_SECONDS ?= 60
fuzz:
	bash dev/fuzz/run_fuzz.sh $(FUZZ_SECONDS)

# data parallel over MPI ranks (Open MPI: libopenmpi-dev openmpi-bin); README "More than one machine"
MPICC ?= mpicc
train_tlm_mpi: train_tlm.c $(TLMC) $(BUILD)/build-flags
	OMPI_CC=$(CC) $(MPICC) $(CFLAGS) $(OPENMP) -DTLM_MPI $< $(LDLIBS) -o $@
