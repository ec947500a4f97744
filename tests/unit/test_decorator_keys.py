"""The decorator's key building without Redis: sanitizing equals ``CacheKey.sanitize``, every parameter kind binds
as Python binds it, and an unresolvable return annotation is a clear error on the first miss."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridcache import CacheKey, CacheSettings, HybridCache
from hybridcache.decorators import segment


@given(st.text())
def test_a_segment_is_exactly_what_cachekey_sanitize_makes(text: str) -> None:
    assert segment(text) == CacheKey.sanitize(text)


@given(st.integers())
def test_an_int_segment_is_its_sanitized_decimal_form(number: int) -> None:
    cache = HybridCache(CacheSettings(service_name="keys"))

    @cache.cached(key="N:{n}")
    async def by_number(n: int) -> int:
        return n

    assert by_number.key_for(number) == "N:" + CacheKey.sanitize(str(number))


def test_every_parameter_kind_binds_as_python_binds_it() -> None:
    cache = HybridCache(CacheSettings(service_name="keys"))

    @cache.cached(key="K:{a}:{b}:{c}:{d}:{rest}:{options}")
    async def shapes(a: int, /, b: int = 2, *rest: int, c: int, d: int = 4, **options: int) -> int:
        return a

    assert shapes.key_for(1, c=3) == "K:1:2:3:4:%28%29:%7B%7D"
    assert shapes.key_for(1, 5, 6, 7, c=3, d=8, x=9) == "K:1:5:3:8:%286%2C%207%29:%7B%27x%27%3A%209%7D"
    with pytest.raises(TypeError):
        shapes.key_for(a=1, c=3)  # type: ignore[call-arg]  # positional-only, as in the original


async def test_an_unresolvable_return_annotation_is_named_on_the_first_miss() -> None:
    cache = HybridCache(CacheSettings(service_name="keys"))

    @cache.cached(key="Later")
    async def later() -> NotDefinedAnywhere:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(TypeError, match=r"cannot resolve the return annotation 'NotDefinedAnywhere' of .*later"):
        await later()
