# Each target makes/refreshes its own virtualenv, so a fresh machine needs only python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-browser bench install clean package-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The distribution was called "dragonfly" before pyproject.toml (that name is
	# another project's on PyPI): drop it from an older .venv.
	$(BIN)/pip uninstall -q -y dragonfly 2>/dev/null || true
	$(BIN)/pip install -q '.[test]'
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

# Reinstall the package (not editable: twistd must see twisted/plugins/).
# build/ is removed first: setuptools would ship stale copies of moved modules from it.
install: $(STAMP)
	rm -rf build
	$(BIN)/pip install -q --no-deps --force-reinstall .
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# Tests run against the installed package (as twistd sees it), from a scratch
# directory so the source tree is not imported instead; DRAGONFLY_SOURCE lets
# them check the shipped etc/ and docs/. The run ends with the skipped tests and
# why (a test whose tool is missing here skips). FAIL_ON_SKIP=1 (CI; test-all)
# fails on any skip and also runs the browser tests, which then need Chromium.
TRIAL = cd .trial && DRAGONFLY_SOURCE=$(CURDIR) DRAGONFLY_ARTIFACTS=$(CURDIR)/.artifacts \
	$(if $(FAIL_ON_SKIP),DRAGONFLY_BROWSER_TESTS=1 DRAGONFLY_REQUIRE_BROWSER=1) \
	$(abspath $(BIN))/python -m dragonfly.test.skipsummary

test: install
	mkdir -p .trial .artifacts && $(TRIAL) $(if $(FAIL_ON_SKIP),--fail-on-skip) -- $(abspath $(BIN))/trial -j2 dragonfly

test-all:
	$(MAKE) test FAIL_ON_SKIP=1

# Only the dashboard in headless Chromium during a real download; screenshots in
# .artifacts/. Skips loudly without Chromium, unless REQUIRE_BROWSER=1.
test-browser: install
	mkdir -p .trial .artifacts && cd .trial && DRAGONFLY_SOURCE=$(CURDIR) DRAGONFLY_BROWSER_TESTS=1 \
	  DRAGONFLY_ARTIFACTS=$(CURDIR)/.artifacts DRAGONFLY_REQUIRE_BROWSER=$(REQUIRE_BROWSER) \
	  $(abspath $(BIN))/trial dragonfly.test.browser

# make demo KEEP=1: the swarm stays up STAY seconds afterwards (the dashboard's URL is printed).
STAY ?= 600
demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python demo/demo.py $(if $(KEEP),--stay $(STAY))

bench: install
	$(BIN)/pip install -q -r bench/requirements.txt
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.run

# Build the .deb from a clean tree, install it, run each role with its SysV script,
# download through the installed dfget and peer, remove and purge it; build the RPM
# (with %check). Root only; see packaging/test-packages.sh.
package-test:
	bash packaging/test-packages.sh

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .trial .artifacts
