"""Contract test suites for plugin kinds, written once and run against every implementation.

Re-exported from :mod:`runtime.testing`; importing them needs pytest.
"""
