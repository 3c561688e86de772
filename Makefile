# tlm.c — make train_tlm | make test | make data | make run | make ablation-quick
CC ?= gcc
CFLAGS ?= -O3 -march=native
# -fno-math-errno: sqrtf sets no errno, so the loops that call it (AdamW) vectorize
CFLAGS += -std=c11 -Wall -Wextra -fno-math-errno
OPENMP ?= -fopenmp
LDLIBS = -lm
PYTHON ?= python3

.PHONY: all test data run portable clean bench compare-llmc test-mutants test-asan fuzz ablation ablation-quick FORCE

all: train_tlm test_tlm

# the compiler and flags of the last build: when they change (make portable, then make),
# the binaries are rebuilt even though the sources are older than them
.build-flags: FORCE
	@echo '$(CC) $(CFLAGS) $(OPENMP)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(OPENMP)' > $@

train_tlm: train_tlm.c .build-flags
	$(CC) $(CFLAGS) $(OPENMP) $< $(LDLIBS) -o $@

# one binary, two precisions: test_tlm.c compiled in double (gradient checks) and in float
test_tlm: test_tlm.c train_tlm.c .build-flags
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) -DTLM_DOUBLE -c test_tlm.c -o test_tlm_double.o
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) -c test_tlm.c -o test_tlm_float.o
	$(CC) $(CFLAGS) $(OPENMP) test_tlm_float.o test_tlm_double.o $(LDLIBS) -o $@
	rm -f test_tlm_float.o test_tlm_double.o

test: train_tlm test_tlm
	./test_tlm

# the build for machines without OpenMP or -march=native: plain C11, one thread
portable:
	$(MAKE) all CFLAGS="-O2 -Wno-unknown-pragmas" OPENMP=

# the Brown Corpus as bytes (the default data) and as GPT-2 BPE tokens
data: data/brown_byte_train.bin data/brown_gpt2_train.bin

data/brown_byte_train.bin:
	$(PYTHON) dev/prepare_data.py --corpus brown --tokenizer byte

data/brown_gpt2_train.bin:
	$(PYTHON) dev/prepare_data.py --corpus brown --tokenizer gpt2

run: train_tlm data
	./train_tlm

# the classroom experiment: uniform vs cosine vs reverse taper for every architecture
# (dev/ablation.py -h); ABLATION_ARGS e.g. "-j 4 --seeds 5 --linear"
ablation: train_tlm data/brown_byte_train.bin
	$(PYTHON) dev/ablation.py $(ABLATION_ARGS)

ablation-quick: train_tlm data/brown_byte_train.bin
	$(PYTHON) dev/ablation.py --quick $(ABLATION_ARGS)

clean:
	rm -f train_tlm test_tlm train_tlm_asan test_tlm_asan dev/bench_tlm *.o .build-flags

# a benchmark, not a test: full training steps and the matmul at the model's shapes
dev/bench_tlm: dev/bench_tlm.c train_tlm.c .build-flags
	$(CC) $(CFLAGS) -Wno-unused-function $(OPENMP) $< $(LDLIBS) -o $@

bench: dev/bench_tlm
	./dev/bench_tlm --threads $(BENCH_THREADS)

# our benchmark beside llm.c's CPU trainer, in turn on this machine (clones llm.c into dev/cache)
compare-llmc:
	bash dev/compare_llmc.sh
BENCH_THREADS ?= 1,2

# every deliberately broken backward must make the tests fail
test-mutants: train_tlm
	bash dev/mutation_test.sh

# the tests and a short training run under AddressSanitizer and UndefinedBehaviorSanitizer.
# detect_leaks=0 for the test binary only: its error tests longjmp out of die() (an exit in
# the real program) and so leave half-built models behind on purpose.
SANITIZE = -O2 -march=native -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
test-asan: test_tlm.c train_tlm.c
	$(CC) $(SANITIZE) -std=c11 -Wall -Wno-unused-function $(OPENMP) train_tlm.c $(LDLIBS) -o train_tlm_asan
	$(CC) $(SANITIZE) -std=c11 -Wall -Wno-unused-function $(OPENMP) -DTLM_DOUBLE -c test_tlm.c -o test_tlm_asan_double.o
	$(CC) $(SANITIZE) -std=c11 -Wall -Wno-unused-function $(OPENMP) -c test_tlm.c -o test_tlm_asan_float.o
	$(CC) $(SANITIZE) $(OPENMP) test_tlm_asan_float.o test_tlm_asan_double.o $(LDLIBS) -o test_tlm_asan
	rm -f test_tlm_asan_float.o test_tlm_asan_double.o
	ASAN_OPTIONS=detect_leaks=0 TLM_TRAINER=./train_tlm_asan ./test_tlm_asan
	bash dev/sanitized_run.sh ./train_tlm_asan

# libFuzzer targets for the shard, checkpoint and tokenizer loaders and the command line
# (clang and libclang-rt-14-dev): each runs FUZZ_SECONDS; see dev/fuzz/README.md
FUZZ_SECONDS ?= 60
fuzz:
	bash dev/fuzz/run_fuzz.sh $(FUZZ_SECONDS)
