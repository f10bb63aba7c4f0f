"""Tests in a real browser (headless Chromium): run by ``make test-browser``."""
