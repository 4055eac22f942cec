"""The shared helpers of conftest.py: a missing real service skips, or fails under CI's
``S2V_REQUIRE_REAL=1``."""

from __future__ import annotations

import pytest
from conftest import REQUIRE_REAL, skip_or_fail

WHY = "mounting a tmpfs needs root (CI runs the tests as root)"


def test_skip_or_fail_fails_under_require_real(monkeypatch) -> None:
    monkeypatch.setenv(REQUIRE_REAL, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        skip_or_fail(WHY)
    assert WHY in str(failed.value) and f"{REQUIRE_REAL}=1" in str(failed.value)
    assert not isinstance(failed.value, pytest.skip.Exception)


@pytest.mark.parametrize("value", [None, "", "0", "true"])
def test_skip_or_fail_skips_otherwise(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_REAL, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_REAL, value)
    with pytest.raises(pytest.skip.Exception) as skipped:
        skip_or_fail(WHY)
    assert str(skipped.value) == WHY
