# make demo / make test work on a fresh Debian bookworm machine as root: both run setup first.
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo demo-ceph test test-fast screenshots lint bench bench-scale bench-nova clean

setup:
	@bash scripts/setup.sh
	@bash scripts/setup-keystone.sh
	@bash scripts/setup-clients.sh
	@bash scripts/setup-ceph.sh
	@bash scripts/setup-manila.sh

demo: setup
	@bash scripts/demo.sh

# A CephFS share from a real Ceph through Manila, attached with the openstack CLI and Keystone
# on, read and written in a guest; everything torn down (docs/ceph.md). ~3 minutes.
demo-ceph: setup
	@bash scripts/demo-ceph.sh

lint: setup
	.venv/bin/ruff check src tests bench tools harness
	.venv/bin/mypy

# Two workers (tests/parallel.py): session services (and their guests) as one group, the other
# guests as another, each on one worker in file order; the rest fills in beside.
# Then the tests that stop a shared service (PostgreSQL), alone.
test: setup lint
	.venv/bin/pytest -q -ra -n 2 --dist loadgroup --durations=25 -m "not exclusive" tests
	.venv/bin/pytest -q -ra -m exclusive tests

# Unit and API tests only (no guests): seconds.
test-fast:
	.venv/bin/pytest -q -m "not vm" tests

# The web console's screenshots in docs/images, taken by its browser tests (docs/console.md).
screenshots: setup
	ATTACHFS_SCREENSHOTS=docs/images .venv/bin/pytest -q tests/ui

# The benchmark (bench/, outside the runtime package; see docs/bench.md): ~5 minutes, boots guests.
# ARGS passes options, e.g. make bench ARGS=--scale (adds part 8, the scale simulation).
bench: setup
	$(PY) -m bench $(ARGS)

# Part 8 alone: 1,000 simulated hosts (real agents on the test fakes) on one PostgreSQL, attaches
# through `attachfs api --workers 4` (docs/bench.md, "8. Scale simulation"). ~20 minutes on 2 cores.
bench-scale: setup
	$(PY) -m bench --scale-only $(ARGS)

# attachfs beside the real compute service (Nova 34, fake virt driver; tools/compute_service/),
# same Keystone, same Manila, same client: latencies and memory side by side (docs/bench.md,
# "9. Side by side"). Opt-in, not part of make test. Installs and starts the stack if needed.
bench-nova: setup
	$(PY) -m bench.nova $(ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
