# qemu-shim: a containerd shim that runs each container (or pod) in its own
# QEMU VM. 'make help' lists the targets.

GO        ?= go
BIN       := bin
GUEST_DIR := build/guest
# The Debian package the guest kernel comes from: the metapackage, resolved
# to today's kernel by scripts/build-guest.sh and recorded in
# $(GUEST_DIR)/kernel-package.
GUEST_KERNEL_PACKAGE ?= linux-image-cloud-amd64
TEST_FLAGS ?=
# containerd, ctr and the runc shim (the benchmark's baseline), built from
# containerd's Go module.
CONTAINERD_VERSION := v2.4.2
CONTAINERD_BIN     := build/containerd-bin
# Debian 12's containerd 1.6, for the compatibility tests (test/compat):
# downloaded and unpacked into build/, never installed (the package brings
# a service and Debian's runc).
CONTAINERD16_DIR   := build/containerd-1.6

export GUEST_KERNEL_PACKAGE
export GOFLAGS := -buildvcs=false

GO_SOURCES := $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum

.PHONY: install quickstart all binaries containerd containerd16 guest deps clients test unit-test integration-test bench check proto clean help

all: binaries

help:
	@echo "make            build bin/ (shim, CLI, agent)"
	@echo "make deps       install everything needed on Debian 12 (idempotent)"
	@echo "make guest      build the guest kernel + initramfs into $(GUEST_DIR)"
	@echo "make containerd16  unpack Debian 12's containerd 1.6 into build/ (not installed), for test/compat"
	@echo "make test       deps + build + guest, then every test (unit and integration)"
	@echo "make bench      boot and latency benchmarks, with their baselines"
	@echo "make proto      regenerate api/ code code from .proto files"

binaries: $(BIN)/qemu-shim $(BIN)/qemu-shim-agent $(BIN)/qemu-shim-taskd $(BIN)/containerd-shim-qemu-v1

$(BIN)/containerd-shim-qemu-v1: $(GO_SOURCES)
	$(GO) build -trimpath -o $@ ./cmd/containerd-shim-qemu-v1

containerd: $(CONTAINERD_BIN)/containerd

$(CONTAINERD_BIN)/containerd:
	GOBIN=$(CURDIR)/$(CONTAINERD_BIN) $(GO) install \
		github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
		github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION) \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION)

containerd16: $(CONTAINERD16_DIR)/usr/bin/containerd

$(CONTAINERD16_DIR)/usr/bin/containerd:
	scripts/containerd16.sh $(CONTAINERD16_DIR)

$(BIN)/qemu-shim: $(GO_SOURCES)
	$(GO) build -trimpath -o $@ ./cmd/qemu-shim

# The guest's agent (PID 1, in the initramfs) and task service (on the
# tools disk): static, stripped.
$(BIN)/qemu-shim-agent: $(GO_SOURCES)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ ./cmd/qemu-shim-agent

$(BIN)/qemu-shim-taskd: $(GO_SOURCES)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ ./cmd/qemu-shim-taskd

# runc for the guest: static, with seccomp, pinned in guest/tools/go.mod.
build/runc: guest/tools/go.mod guest/tools/go.sum
	@mkdir -p build
	cd guest/tools && CGO_ENABLED=1 $(GO) build -trimpath -tags "seccomp netgo osusergo" \
		-ldflags "-s -w -extldflags -static" -o ../../build/runc github.com/opencontainers/runc

# crun for the guest: Debian's, built from its source package and linked
# statically.
build/crun/crun: scripts/build-crun.sh
	scripts/build-crun.sh build/crun

guest: $(GUEST_DIR)/initramfs.cpio

$(GUEST_DIR)/initramfs.cpio: $(BIN)/qemu-shim-agent $(BIN)/qemu-shim-taskd build/runc build/crun/crun scripts/build-guest.sh
	scripts/build-guest.sh $(GUEST_DIR) $(BIN)/qemu-shim-agent $(BIN)/qemu-shim-taskd build/runc build/crun

deps:
	scripts/deps.sh

check: binaries
	$(BIN)/qemu-shim check --guest-dir $(GUEST_DIR)

unit-test:
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

# The clients users drive the shim with (nerdctl, crictl, critest), built
# from the source snapshots in ../shared when it is there; the tests that
# need them skip, saying why, when it is not.
SHARED_TOOLS := $(wildcard ../shared/tools/build-clients.sh)
clients:
ifneq ($(SHARED_TOOLS),)
	$(SHARED_TOOLS) build/clients
else
	@echo "clients: no ../shared/tools/build-clients.sh here: nerdctl and CRI tests will skip"
endif

test: deps binaries guest containerd containerd16 clients
	$(GO) vet ./...
	QEMU_SHIM_INTEGRATION=1 $(GO) test -count=1 -timeout 30m $(TEST_FLAGS) ./...

bench: deps binaries guest containerd clients
	$(GO) run ./test/bench -guest-dir $(GUEST_DIR)

proto:
	@command -v protoc >/dev/null || { echo "protoc is missing: apt-get install protobuf-compiler"; exit 1; }
	@mkdir -p build/protoc-gen
	$(GO) build -o build/protoc-gen/ google.golang.org/protobuf/cmd/protoc-gen-go github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
	PATH=$(CURDIR)/build/protoc-gen:$$PATH protoc -I . -I /usr/include \
		--go_out=. --go_opt=paths=source_relative \
		--go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative \
		$$(find api -name '*.proto')

PREFIX ?= /usr/local

install: binaries guest
	install -D -m 0755 $(BIN)/containerd-shim-qemu-v1 $(PREFIX)/bin/containerd-shim-qemu-v1
	install -D -m 0755 $(BIN)/qemu-shim $(PREFIX)/bin/qemu-shim
	install -D -m 0644 $(GUEST_DIR)/vmlinux $(PREFIX)/share/qemu-shim/vmlinux
	install -D -m 0644 $(GUEST_DIR)/initramfs.cpio $(PREFIX)/share/qemu-shim/initramfs.cpio
	install -D -m 0644 $(GUEST_DIR)/tools.erofs $(PREFIX)/share/qemu-shim/tools.erofs

clean:
	rm -rf $(BIN) build

# The README's first command: from a fresh Debian 12 to a container in a VM,
# through a private containerd.
quickstart: deps binaries guest containerd
	scripts/quickstart.sh
