"""The REST gateway every node serves: member writes, auditor reads, operator status."""
