# ztcanary: `make help` lists the targets.
GO        ?= go
SIM_NODES ?= 3
SIM_DIR   ?= .sim
# Tests start simulated clusters and (later) load eBPF programs: give them room.
TEST_TIMEOUT ?= 45m
SIM       := $(GO) run ./kind/sim/cmd/ztcanary-sim

.DEFAULT_GOAL := help
.PHONY: help build test test-unit sim-binaries optional-binaries generate verify refusals lint sim-up sim-down demo bench fuzz reliability images kind-e2e

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST) | awk -F': ' '{printf "  %-14s %s\n", $$1, $$2}'

## build: build ztcanary, kubectl-ztcanary (the same CLI as a kubectl plugin) and the daemons into bin/
build:
	@mkdir -p bin
	@if ls cmd/*/main.go >/dev/null 2>&1; then $(GO) build -o bin/ ./cmd/... && ls bin; \
	else echo "build: no binaries under cmd/ yet"; fi

## sim-binaries: build the simulated cluster's binaries and istio-render (Istio's charts) once (cached by version)
sim-binaries:
	@$(SIM) build

## optional-binaries: build Traefik (end-to-end traffic tests, ~6 min cold), istiod (sidecar-mode tests) and hey (benchmark) once
optional-binaries:
	@$(SIM) build-optional

## test: run every test, the simulated-cluster and eBPF ones included (eBPF needs root)
test: sim-binaries optional-binaries
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## test-unit: the tests that need no simulated cluster, no root and no built binary (go test -short; builds nothing else)
test-unit:
	$(GO) test -short -count=1 -timeout 10m ./...

## generate: regenerate committed code (CRDs, deepcopy, bpf2go bindings)
generate:
	$(GO) generate ./...

## verify: fail if `make generate` changes committed files
verify: generate
	git diff --exit-code

## refusals: rewrite docs/refusals-admission.md (real API server), docs/refusals-preflight.md and docs/refusals-agent.md from the tests
refusals: sim-binaries
	$(GO) test -count=1 -run '^TestAgentRefusesBadCgroupInput$$' ./agent -update
	$(GO) test -count=1 -run '^TestAdmissionRefusesBadInputWithAClearMessage$$' ./api/v1alpha1 -update
	$(GO) test -count=1 -run '^TestPreflightRefusesBadInputAndChangesNothing$$' ./orchestrator -update

## lint: go vet, gofmt, bash -n and shellcheck (when installed) on the scripts
lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@for s in $$(git ls-files '*.sh' .ci/run); do bash -n $$s || exit 1; done
	@if command -v shellcheck >/dev/null; then shellcheck $$(git ls-files '*.sh' .ci/run); \
	else echo "lint: shellcheck not installed (apt-get install shellcheck): skipped"; fi

## sim-up: start a simulated cluster of SIM_NODES nodes, kubeconfig in .sim/kubeconfig
sim-up:
	@$(SIM) up -dir $(SIM_DIR) -nodes $(SIM_NODES)

## sim-down: stop the simulated cluster started by sim-up and remove its data
sim-down:
	@$(SIM) down -dir $(SIM_DIR)

## demo: a full canary upgrade with traffic through Traefik and eBPF node agents, then a failed one rolled back (root: real traffic and agents)
demo: sim-binaries build
	$(GO) run ./kind/demo -orchestrator bin/ztcanary-orchestrator -agent bin/ztcanary-agent

## bench: run the benchmarks and print their figures
bench: sim-binaries optional-binaries
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

FUZZTIME   ?= 60s
CRASH_RUNS ?= 30
FUZZ_TARGETS := ./api/v1alpha1:FuzzAdmission ./orchestrator/plan:FuzzValidatePlan ./orchestrator/plan:FuzzTargetNodes ./orchestrator:FuzzReconcilePass \
	./agent:FuzzParseProcCgroup ./agent:FuzzPodUIDFromCgroupPath ./agent:FuzzBuildReportAndJudge

## fuzz: run every fuzz target for FUZZTIME each (default 60s), with go test's default parallelism
# A run that fails with a bare "context deadline exceeded" and writes no failing input
# is Go's fuzzing coordinator racing its own -fuzztime deadline (go.dev/issue/75804,
# fixed in Go 1.27), not a finding: it is said and passed over.
fuzz: sim-binaries
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$fn ($$pkg, $(FUZZTIME))"; log=$$(mktemp); \
	  { $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg; echo $$? > $$log.rc; } 2>&1 | tee $$log; rc=$$(cat $$log.rc); \
	  if [ "$$rc" != 0 ] && grep -Eqx ' *context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
	    echo "fuzz: $$fn: the coordinator raced its deadline (go.dev/issue/75804); no input failed"; rc=0; fi; \
	  rm -f $$log $$log.rc; [ "$$rc" = 0 ] || exit 1; done

## reliability: the reliability campaign of docs/reliability.md (CRASH_RUNS killed upgrades, API faults, hand-over, fuzzing)
reliability: sim-binaries
	ZTCANARY_CRASH_RUNS=$(CRASH_RUNS) $(GO) test -count=1 -v -timeout 60m \
	  -run 'TestCrashCampaign|TestUpgradesEndCorrectlyThroughAPIFaults|TestLeaderElectionHandsOverWhenTheLeaderIsKilled|TestKilledOrchestratorResumesInEveryStage' \
	  ./orchestrator/
	@$(MAKE) --no-print-directory fuzz

## images: build the container images ztcanary/orchestrator:dev and ztcanary/agent:dev (Docker)
images:
	docker build -f deploy/Dockerfile --build-arg BINARY=ztcanary-orchestrator -t ztcanary/orchestrator:dev .
	docker build -f deploy/Dockerfile --build-arg BINARY=ztcanary-agent -t ztcanary/agent:dev .

## kind-e2e: the seed flow on a real kind cluster, done by ztcanary (Docker, kind, helm, internet)
kind-e2e:
	kind/e2e.sh
