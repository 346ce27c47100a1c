# nbsphere — build, test, bench, deps.
#   make deps      install the Debian packages the build needs (root or sudo); python3-anndata
#                  lets the writer tests check written .h5ad files with anndata itself
#   make           build ./nbsphere and libnbsphere.a
#   make test      build and run every test; ends with "N passed, N failed"
#   make test SANITIZE=address,undefined   the same under sanitizers (separate build folder)
#   make test SKIP_SLOW=1                   without the long training tests (tests/*slow*.c)
#   make bench     speed and memory against the PyTorch reference (make bench-deps first)
#   make fuzz      libFuzzer harnesses (fuzz/*.c, clang) for FUZZ_TIME seconds each (default 60)

CC ?= cc
PKGS := hdf5 openblas yaml-0.1 zlib
DEB_PACKAGES := build-essential pkg-config libhdf5-dev libgsl-dev libopenblas-dev libyaml-dev \
                zlib1g-dev libcmocka-dev hdf5-tools clang libclang-rt-14-dev libomp-14-dev python3-anndata

SANITIZE ?=
BUILD ?= build$(if $(SANITIZE),-san)

# GSL's own pkg-config pulls in gslcblas; OpenBLAS provides the CBLAS symbols instead.
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) gsl 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lgsl

OPT ?= -O3
# Tuned for the machine that builds (vector exp/log, AVX in the layers); `make ARCH=` for a
# binary that runs on any x86-64.
ARCH ?= -march=native
# gcc warns that error messages may be cut at their buffer size; that is intended.
NOTRUNC := $(if $(findstring clang,$(shell $(CC) --version 2>/dev/null)),,-Wno-format-truncation)
CFLAGS ?= $(OPT) $(ARCH) -g
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror $(NOTRUNC) -fopenmp -fno-math-errno -Iinclude $(PKG_CFLAGS)
LDLIBS += $(PKG_LIBS) -fopenmp -lm
ifneq ($(SANITIZE),)
CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

# The default build puts nbsphere and libnbsphere.a at the top; other build folders
# (SANITIZE=..., BUILD=...) keep theirs inside the folder.
ifeq ($(BUILD),build)
BIN := nbsphere
LIB := libnbsphere.a
else
BIN := $(BUILD)/nbsphere
LIB := $(BUILD)/libnbsphere.a
endif

.PHONY: all deps test bench bench-deps clean check-deps fuzz fuzz-bin
all: $(BIN) $(LIB)

check-deps:
	@for p in $(PKGS) gsl cmocka; do pkg-config --exists $$p || \
	  { echo "missing library '$$p': run 'make deps' (installs: $(DEB_PACKAGES))" >&2; exit 1; }; done

deps:
	@SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	missing=; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "all build dependencies are installed"; fi

$(BUILD)/%.o: src/%.c $(wildcard include/nbsphere/*.h) $(wildcard src/*.h) | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD):
	mkdir -p $(BUILD)/tests

$(LIB): $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BIN): $(BUILD)/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT) tests/testutil.h $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests -o $@ $< $(TEST_SUPPORT) $(LIB) $(LDLIBS) -lhdf5_hl -lcmocka

# SKIP_SLOW=1 leaves out the test binaries named *slow* (long training runs), e.g. under sanitizers.
TEST_RUN := $(if $(SKIP_SLOW),$(filter-out %slow,$(TEST_BIN)),$(TEST_BIN))

test: check-deps $(BIN) $(TEST_RUN)
	@NBS_BIN=$(abspath $(BIN)) NBS_BUILD=$(abspath $(BUILD)) tests/run_tests.sh $(TEST_RUN)

# Fuzzing: the library and harnesses are built by clang in build-fuzz with libFuzzer's
# instrumentation and ASan/UBSan; fuzz/run_fuzz.sh runs each harness for FUZZ_TIME seconds.
FUZZ_TIME ?= 60
FUZZ_BIN := $(patsubst fuzz/%.c,$(BUILD)/%,$(wildcard fuzz/fuzz_*.c))

$(BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_util.h $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -Ifuzz -o $@ $< $(LIB) $(LDLIBS)

fuzz-bin: $(FUZZ_BIN)

fuzz: check-deps
	$(MAKE) CC=clang BUILD=build-fuzz SANITIZE=fuzzer-no-link,address,undefined fuzz-bin
	FUZZ_TIME=$(FUZZ_TIME) fuzz/run_fuzz.sh build-fuzz

bench-deps:
	@SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	dpkg -s python3-torch >/dev/null 2>&1 || { $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-torch python3-numpy python3-scipy; }

bench: $(BIN)
	BIN=$(abspath $(BIN)) bench/run_bench.sh

clean:
	rm -rf build build-san build-fuzz nbsphere libnbsphere.a
