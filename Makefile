# nbsphere — build, test, bench, deps.
#   make deps      install the Debian packages the build needs (root or sudo); python3-anndata
#                  lets the writer tests check written .h5ad files with anndata itself
#   make           build ./nbsphere and libnbsphere.a
#   make test      build and run every test; ends with "N passed, N failed"
#   make test SANITIZE=address,undefined   the same under sanitizers (separate build folder)
#   make test SKIP_SLOW=1                   without the long training tests (tests/*slow*.c)
#   make bench     speed and memory against the PyTorch reference (make bench-deps first), and
#                  the floor: the machine's sgemm peak and vector exp/log cost, native and AVX2 builds
#   make bench-knn recall and time of the approximate k-NN graph against the exact one (50k cells)
#   make bench-scale   s/epoch and peak memory, in memory against out of core (input.backed), on
#                  simulated .h5ad files of 100k, 500k and 2M cells (SIZES=..., EPOCHS=...), then
#                  1 against 2 MPI processes (MPI_SIZES=...) and the many-node projection
#   make fuzz      libFuzzer harnesses (fuzz/*.c, clang) for FUZZ_TIME seconds each (default 60)
#   make install   binary, static and shared library, headers, nbsphere.pc, man page into
#                  $(DESTDIR)$(PREFIX) (default /usr/local); make uninstall removes them
#   make ARCH=     portable x86-64 build (ARCH=-march=x86-64-v3: AVX2), in its own build folder;
#                  CC=clang, OPT=..., SANITIZE=... likewise (see BUILD below)
#   make MPI=1     data-parallel training over MPI (mpicc, OpenMPI) in build-mpi; make deps MPI=1
#                  installs OpenMPI, make test MPI=1 adds the mpirun tests (tests/test_mpi.c)

CC ?= cc
PKGS := hdf5-serial openblas yaml-0.1 zlib libcrypto igraph
DEB_PACKAGES := build-essential pkg-config libhdf5-dev libgsl-dev libopenblas-dev libyaml-dev libigraph-dev \
                libflann-dev zlib1g-dev libssl-dev libcsv-dev libcmocka-dev hdf5-tools clang libclang-rt-14-dev libomp-14-dev python3-anndata \
                libglpk-dev libarpack2-dev libplfit-dev libgmp-dev
# (the last four: what `pkg-config --static --libs igraph` names, for a static link against libnbsphere.a)
MPI ?=
DEB_PACKAGES += $(if $(MPI),libopenmpi-dev openmpi-bin)

SANITIZE ?=
OPT ?= -O3
# Tuned for the machine that builds (vector exp/log, AVX in the layers); `make ARCH=` for a
# binary that runs on any x86-64.
ARCH ?= -march=native

# Objects compiled with other flags are never mixed: a compiler, ARCH, OPT or SANITIZE other
# than the defaults gets its own folder (make ARCH= builds in build-portable, make CC=clang
# ARCH=-march=x86-64-v3 in build-clang-x86-64-v3, SANITIZE=... in build-san), so switching back
# and forth rebuilds nothing; within a folder, $(BUILD)/flags (below) catches the rest.
comma := ,
space := $(subst ,, )
FLAVOUR := $(if $(filter-out cc,$(CC)),$(notdir $(lastword $(CC)))) \
           $(if $(filter-out -march=native,$(ARCH)),$(patsubst -march=%,%,$(ARCH)),$(if $(ARCH),,portable)) \
           $(if $(filter-out -O3,$(OPT)),$(OPT:-%=%),$(if $(OPT),,noopt)) $(if $(SANITIZE),san) $(if $(MPI),mpi)
FLAVOUR := $(subst $(space),-,$(strip $(subst =,_,$(subst $(comma),_,$(subst /,_,$(FLAVOUR))))))
BUILD ?= build$(if $(FLAVOUR),-$(FLAVOUR))

# GSL's own pkg-config pulls in gslcblas; OpenBLAS provides the CBLAS symbols instead.
# libcsv (RFC 4180 tables) ships no pkg-config file. FLANN (approximate k-NN, its C interface
# libflann) is linked by name: its flann.pc requires `hdf5`, which Debian points at the MPI build
# once libflann-dev's dependencies (libhdf5-mpi-dev) are in, and libflann itself needs no HDF5.
# For the same reason HDF5 is named `hdf5-serial`: plain `hdf5` would become the MPI build.
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) gsl 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lgsl -lcsv -lflann

# gcc warns that error messages may be cut at their buffer size; that is intended.
IS_CLANG := $(findstring clang,$(shell $(CC) --version 2>/dev/null))
NOTRUNC := $(if $(IS_CLANG),,-Wno-format-truncation)
CLANG_VECLIB := $(if $(and $(IS_CLANG),$(findstring x86_64,$(shell $(CC) -dumpmachine 2>/dev/null))),-fveclib=libmvec)
# MPI=1 compiles with OpenMPI's wrapper around the compiler chosen (OMPI_CC: cc, or CC=clang);
# src/parallel.c and the mpirun tests exist only in that build, and main.c's MPI calls with NBS_MPI.
ifneq ($(MPI),)
export OMPI_CC := $(CC)
override CC := mpicc
endif
# CFLAGS, CPPFLAGS, LDFLAGS and LDLIBS are the user's: CFLAGS replaces OPT, ARCH and -g; what
# the build needs is appended even to values given on the command line (override), so that
# `make CFLAGS=-O2` keeps the warnings, include paths and OpenMP. WERROR= drops -Werror.
# Objects are position-independent for libnbsphere.so; -fno-semantic-interposition keeps calls
# inside the library as direct (and inlinable) as in the static build.
WERROR ?= -Werror
CFLAGS ?= $(OPT) $(ARCH) -g
USER_FLAGS := CFLAGS='$(CFLAGS)' CPPFLAGS='$(CPPFLAGS)' LDFLAGS='$(LDFLAGS)' LDLIBS='$(LDLIBS)'
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra $(WERROR) $(NOTRUNC) -fopenmp -fno-math-errno \
                   -fPIC -fno-semantic-interposition -Iinclude $(PKG_CFLAGS)
override LDLIBS += $(PKG_LIBS) -fopenmp -lm
ifneq ($(MPI),)
override CFLAGS += -DNBS_MPI
endif
ifneq ($(SANITIZE),)
override CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
# clang puts UBSan's checks into loop bodies before it vectorises, so no `omp simd` loop can be
# vectorised under UBSan and its "loop not vectorized" warning says nothing about the code.
override CFLAGS += $(if $(and $(IS_CLANG),$(findstring undefined,$(SANITIZE))),-Wno-pass-failed)
override LDFLAGS += -fsanitize=$(SANITIZE)
endif

LIB_SRC := $(filter-out src/main.c $(if $(MPI),,src/parallel.c),$(wildcard src/*.c))
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/%.o)
TEST_SRC := $(filter-out $(if $(MPI),,tests/test_mpi.c),$(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(filter-out tests/test_%,$(wildcard tests/*.c))

# The default build puts nbsphere and libnbsphere.a at the top; other build folders
# (SANITIZE=..., BUILD=...) keep theirs inside the folder. The shared library stays in the
# folder in every case: it is for installing.
ifeq ($(abspath $(BUILD)),$(abspath build))
BIN := nbsphere
LIB := libnbsphere.a
else
BIN := $(BUILD)/nbsphere
LIB := $(BUILD)/libnbsphere.a
endif

VERSION := $(shell sed -n 's/^\#define NBS_VERSION "\(.*\)"/\1/p' include/nbsphere/version.h)
# The soname's number is the ABI's, not the release's: raise it when a release breaks the ABI.
SOVERSION := 0
SONAME := libnbsphere.so.$(SOVERSION)
SHLIB := $(BUILD)/libnbsphere.so.$(VERSION)

.PHONY: all deps test bench bench-bins print-build bench-knn bench-scale bench-deps clean check-deps fuzz fuzz-bin install install-only uninstall FORCE
all: $(BIN) $(LIB) $(SHLIB)

# The full compile and link lines of this folder. Every object depends on this file, and it
# is rewritten only when they change, so `make CFLAGS=...` or `make CPPFLAGS=...` on an
# existing folder recompiles everything instead of linking old objects with new ones.
BUILD_FLAGS := $(CC) $(CFLAGS) $(CPPFLAGS) $(CLANG_VECLIB) | $(LDFLAGS) $(LDLIBS)
ifneq ($(file <$(BUILD)/flags),$(BUILD_FLAGS))
$(BUILD)/flags: FORCE
endif
$(BUILD)/flags: | $(BUILD)
	@printf '%s\n' '$(subst ','\'',$(BUILD_FLAGS))' > $@

check-deps:
	@for p in $(PKGS) gsl cmocka; do pkg-config --exists $$p || \
	  { echo "missing library '$$p': run 'make deps' (installs: $(DEB_PACKAGES))" >&2; exit 1; }; done
	@[ -f /usr/include/csv.h ] || { echo "missing library 'libcsv': run 'make deps' (installs: $(DEB_PACKAGES))" >&2; exit 1; }
	@[ -f /usr/include/flann/flann.h ] || { echo "missing library 'libflann': run 'make deps' (installs: $(DEB_PACKAGES))" >&2; exit 1; }

deps:
	@SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	missing=; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "all build dependencies are installed"; fi

$(BUILD)/%.o: src/%.c $(wildcard include/nbsphere/*.h) $(wildcard src/*.h) $(BUILD)/flags | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c $< -o $@

# The likelihood's `omp simd` loops over exp and log call glibc's vector variants (libmvec): gcc
# does from the `declare simd` declarations in src/likelihood.c, clang only when told which
# vector library to use (clang 14 maps them to the AVX2 variants, _ZGVdN4v_*, on any x86-64
# with AVX2). Only there, as with gcc, so that no other loop changes its results (CLANG_VECLIB,
# with the compiler above).
$(BUILD)/likelihood.o $(BUILD)/vecmath_probe: override CFLAGS += $(CLANG_VECLIB)

$(BUILD):
	mkdir -p $(BUILD)/tests

$(LIB): $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BIN): $(BUILD)/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --no-undefined: a library missing from LDLIBS fails here, not in the user's link. (Not under
# sanitizers: clang leaves their runtime to the executable.)
$(SHLIB): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) $(if $(SANITIZE),,-Wl,--no-undefined) $(LDFLAGS) -o $@ $^ $(LDLIBS)
	ln -sf $(notdir $@) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libnbsphere.so

# Test binaries depend on $(LIB), so a change of flags (which rebuilds every object) relinks them.
# WRAP: calls that a test's own wrappers stand in for (-Wl,--wrap), set per test below.
$(BUILD)/tests/%: tests/%.c $(TEST_SUPPORT) tests/testutil.h $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -Itests -o $@ $< $(TEST_SUPPORT) $(LIB) $(LDLIBS) -lhdf5_hl -lcmocka \
	  $(foreach f,$(WRAP),-Wl,--wrap=$(f))

# The latent test counts the library's allocating calls in a training step.
$(BUILD)/tests/test_latent: WRAP := malloc calloc realloc gsl_integration_workspace_alloc

# The allocation-failure test: the library's own allocating calls (libc, GSL constructors, libyaml
# loading) go through the test's counting wrappers; the libraries' internal allocations do not.
ALLOC_WRAP := malloc calloc realloc free strdup strndup open_memstream hcreate_r gsl_rng_alloc gsl_vector_alloc \
              gsl_matrix_alloc gsl_matrix_calloc gsl_eigen_symmv_alloc gsl_integration_workspace_alloc \
              yaml_parser_initialize yaml_parser_load
$(BUILD)/tests/test_alloc_faults: tests/test_alloc_faults.c $(TEST_SUPPORT) tests/testutil.h $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -Itests -o $@ $< $(TEST_SUPPORT) $(LIB) $(LDLIBS) -lhdf5_hl -lcmocka -ldl \
	  $(foreach f,$(ALLOC_WRAP),-Wl,--wrap=$(f))

# SKIP_SLOW=1 leaves out the test binaries named *slow* (long training runs), e.g. under sanitizers.
TEST_RUN := $(if $(SKIP_SLOW),$(filter-out %slow,$(TEST_BIN)),$(TEST_BIN))

# NBS_CC and NBS_SANITIZE let test_install build its program the way the library was built.
test: check-deps all $(TEST_RUN)
	@NBS_BIN=$(abspath $(BIN)) NBS_BUILD=$(abspath $(BUILD)) NBS_CC='$(CC)' NBS_SANITIZE='$(SANITIZE)' \
	  tests/run_tests.sh $(TEST_RUN)

# Fuzzing: the library and harnesses are built by clang in build-fuzz with libFuzzer's
# instrumentation and ASan/UBSan; fuzz/run_fuzz.sh runs each harness for FUZZ_TIME seconds from
# fuzz/corpus, and FUZZ_MERGE=1 adds what it found that reaches new code to fuzz/corpus.
FUZZ_TIME ?= 60
FUZZ_MERGE ?= 0
FUZZ_BUILD ?= build-fuzz
FUZZ_BIN := $(patsubst fuzz/%.c,$(BUILD)/%,$(wildcard fuzz/fuzz_*.c))

$(BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_util.h $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -fsanitize=fuzzer -Ifuzz -o $@ $< $(LIB) $(LDLIBS)

fuzz-bin: $(FUZZ_BIN)

# The sub-make gets the user's own flags, not this make's (which hold gcc's options).
fuzz: check-deps
	$(MAKE) CC=clang BUILD=$(FUZZ_BUILD) SANITIZE=fuzzer-no-link,address,undefined $(USER_FLAGS) fuzz-bin
	FUZZ_TIME=$(FUZZ_TIME) FUZZ_MERGE=$(FUZZ_MERGE) fuzz/run_fuzz.sh $(FUZZ_BUILD)

# Installing: GNU's directory variables, under DESTDIR for staged installs (packages).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL ?= install
HEADERS := $(filter-out $(if $(MPI),,include/nbsphere/parallel.h),$(wildcard include/nbsphere/*.h))
# What a static link needs besides the pkg-config packages (gsl's own .pc would add gslcblas,
# whose CBLAS symbols OpenBLAS provides); the public headers include <gsl/gsl_rng.h>.
PC_LIBS_PRIVATE := -lgsl -lcsv -lflann -fopenmp -lm $(if $(SANITIZE),-fsanitize=$(SANITIZE))
PC_CFLAGS := $(shell pkg-config --cflags gsl 2>/dev/null)
# libdir and includedir relative to ${prefix} where they lie under it, so that pkg-config's
# --define-prefix or --define-variable=prefix=... can relocate the tree.
PC_LIBDIR := $(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))
PC_INCLUDEDIR := $(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))

# install-only copies what $(BUILD) holds without building (used by tests/test_install.c on
# the folder under test); install builds first.
define install-files
	@for f in $(BIN) $(LIB) $(SHLIB); do [ -f $$f ] || { echo "$$f is missing: run make first" >&2; exit 1; }; done
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) \
	  $(DESTDIR)$(INCLUDEDIR)/nbsphere $(DESTDIR)$(MANDIR)/man1
	$(INSTALL) -m 755 $(BIN) $(DESTDIR)$(BINDIR)/nbsphere
	$(INSTALL) -m 644 $(LIB) $(DESTDIR)$(LIBDIR)/libnbsphere.a
	$(INSTALL) -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/$(notdir $(SHLIB))
	ln -sf $(notdir $(SHLIB)) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libnbsphere.so
	$(INSTALL) -m 644 $(HEADERS) $(DESTDIR)$(INCLUDEDIR)/nbsphere/
	sed -e 's|@PREFIX@|$(PREFIX)|g; s|@LIBDIR@|$(PC_LIBDIR)|g; s|@INCLUDEDIR@|$(PC_INCLUDEDIR)|g' \
	  -e 's|@VERSION@|$(VERSION)|g; s|@REQUIRES_PRIVATE@|$(PKGS)|g' \
	  -e 's|@LIBS_PRIVATE@|$(PC_LIBS_PRIVATE)|g; s|@CFLAGS@|$(PC_CFLAGS)|g; s| *$$||' \
	  nbsphere.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/nbsphere.pc
	$(INSTALL) -m 644 docs/nbsphere.1 $(DESTDIR)$(MANDIR)/man1/nbsphere.1
endef

install: all
	$(install-files)
	@# a new soname is found at once (only for a real install as root; harmless otherwise)
	@[ -n "$(DESTDIR)" ] || [ "$$(id -u)" != 0 ] || ldconfig 2>/dev/null || true

install-only:
	$(install-files)

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/nbsphere $(DESTDIR)$(LIBDIR)/libnbsphere.a $(DESTDIR)$(LIBDIR)/libnbsphere.so \
	  $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/$(notdir $(SHLIB)) $(DESTDIR)$(PKGCONFIGDIR)/nbsphere.pc \
	  $(DESTDIR)$(MANDIR)/man1/nbsphere.1 $(addprefix $(DESTDIR)$(INCLUDEDIR)/nbsphere/,$(notdir $(HEADERS)))
	rmdir $(DESTDIR)$(INCLUDEDIR)/nbsphere 2>/dev/null || true

bench-deps:
	@SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	dpkg -s python3-torch python3-sklearn python3-igraph >/dev/null 2>&1 || { $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-torch python3-numpy python3-scipy \
	  python3-sklearn python3-igraph; }

# make bench also builds the AVX2-limited flavour (ARCH=-march=x86-64-v3, its own folder) for
# the floor table's second row, and in each folder the probes of the floor: vecmath_probe (the
# vector exp/log at that folder's ARCH) and layers_probe (ways to compute the output layer).
AVX2_ARCH := -march=x86-64-v3
bench: bench-bins
	$(MAKE) --no-print-directory ARCH=$(AVX2_ARCH) bench-bins
	BIN=$(abspath $(BIN)) BUILD_DIR=$(abspath $(BUILD)) \
	  AVX2_DIR=$$($(MAKE) -s --no-print-directory ARCH=$(AVX2_ARCH) print-build) bench/run_bench.sh

bench-bins: $(BIN) $(BUILD)/vecmath_probe $(BUILD)/layers_probe
print-build:
	@echo $(abspath $(BUILD)) $(abspath $(BIN))

# with this folder's compiler and flags, so that it calls the libmvec variant src/likelihood.c calls
$(BUILD)/vecmath_probe: bench/vecmath_probe.c src/vecmath_internal.h $(BUILD)/flags | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) -Isrc $(LDFLAGS) -o $@ $< -lm

$(BUILD)/layers_probe: bench/layers_probe.c $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/knn_recall: bench/knn_recall.c $(LIB) | $(BUILD)
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

bench-knn: $(BIN) $(BUILD)/knn_recall
	BIN=$(abspath $(BIN)) KNN_BIN=$(abspath $(BUILD)/knn_recall) bench/knn_recall.sh

bench-scale: $(BIN)
	BIN=$(abspath $(BIN)) bench/scale.sh

clean:
	rm -rf build build-* nbsphere libnbsphere.a
