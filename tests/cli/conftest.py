"""The registry tests' fixtures, shared with the CLI's registry commands (tests/cli/test_registry.py)."""

from tests.distribution.conftest import ca, isolated_home, plain_registry, secure_registry

__all__ = ["ca", "isolated_home", "plain_registry", "secure_registry"]
