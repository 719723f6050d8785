"""The login limits' arithmetic (services/download/login_limits.py), on a clock the test holds."""

from __future__ import annotations

import pytest

from services.download.login_limits import LoginLimiter, address_key


def test_an_address_gets_its_attempts_then_waits_for_the_oldest() -> None:
    limiter = LoginLimiter(per_address=3, user_failures=100, total_failures=1000)
    assert [limiter.attempt("192.0.2.1", "ann", now=t) for t in (0, 10, 20)] == [0, 0, 0]
    assert limiter.attempt("192.0.2.1", "ann", now=30) == 30  # the try at 0 leaves at 60
    assert limiter.attempt("192.0.2.2", "ann", now=30) == 0  # another address: untouched
    assert limiter.attempt("192.0.2.1", "bob", now=60) == 0
    assert limiter.attempt("192.0.2.1", "bob", now=61) == 9  # the try at 10 leaves at 70


def test_a_guarded_name_refuses_only_addresses_that_failed_for_it() -> None:
    limiter = LoginLimiter(per_address=10, user_failures=3, total_failures=1000)
    for i, t in enumerate((0, 1, 2)):
        assert limiter.attempt(f"198.51.100.{i}", "Admin", now=t) == 0
        limiter.failed(f"198.51.100.{i}", "Admin", now=t)
    assert limiter.guarded("admin", now=3)
    assert limiter.attempt("198.51.100.0", "admin", now=3) == 57
    assert limiter.attempt("198.51.100.0", "other", now=3) == 0  # only for that name
    assert limiter.attempt("192.0.2.7", "ADMIN", now=3) == 0  # a clean address tries
    assert not limiter.guarded("admin", now=60.5)  # the first failure is a minute old
    assert limiter.attempt("198.51.100.2", "admin", now=60.5) == 0


def test_many_failures_everywhere_refuse_every_address_that_failed() -> None:
    limiter = LoginLimiter(per_address=10, user_failures=100, total_failures=2)
    limiter.failed("203.0.113.1", "a", now=0)
    assert limiter.attempt("203.0.113.1", "b", now=1) == 0  # one failure in all: no guard
    limiter.failed("203.0.113.2", "b", now=1)
    assert limiter.attempt("203.0.113.1", "c", now=2) == 58
    assert limiter.attempt("203.0.113.1", None, now=2) == 58  # single sign-on too
    assert limiter.attempt("192.0.2.1", "c", now=2) == 0


def test_refused_tries_are_not_counted() -> None:
    limiter = LoginLimiter(per_address=1, user_failures=100, total_failures=1000)
    assert limiter.attempt("192.0.2.1", now=0) == 0
    assert [limiter.attempt("192.0.2.1", now=t) for t in (10, 20, 59)] == [50, 40, 1]
    assert limiter.attempt("192.0.2.1", now=60) == 0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key
