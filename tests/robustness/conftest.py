"""Fixtures of the robustness suite."""
import pytest


@pytest.fixture
def write(tmp_path):
    """``write(name, data) -> path`` under the test's tmp dir."""

    def _write(name: str, data: bytes) -> str:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p)

    return _write
