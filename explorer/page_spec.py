"""The page contract: every module in ``explorer/app_pages/`` declares a :class:`PageSpec` and a ``main()``.

A page module looks like this (importing it renders nothing; the app calls ``main()``)::

    PAGE = PageSpec(key="influence", title="Influence", icon=":material/compare_arrows:", order=30,
                    params=("run", "test", "train", "method", "k"))

    def main() -> None:
        v = ui.require_view()      # the run, or a help page and stop
        test = state.get_int("test", v.n_test)
        ...

``explorer/app.py`` builds the menu from :func:`discover` (sorted by ``order``); the key is the page's
URL path (``/influence``) and the value of ``?page=``. Torch-free; streamlit only in :func:`nav_page`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PACKAGE = "explorer.app_pages"
#: the page served at ``/`` (Streamlit's default page)
HOME = "runs"


@dataclass(frozen=True)
class PageSpec:
    """What a page declares about itself.

    ``key``: URL path and ``?page=`` value; ``title``/``icon``: its menu entry; ``order``: its place
    in the menu (ascending); ``params``: the URL parameters it reads or writes (all of them must be
    in :data:`explorer.state.PARAMS`).
    """

    key: str
    title: str
    icon: str
    order: int
    params: tuple[str, ...] = ("run",)


@dataclass(frozen=True)
class Page:
    """A discovered page: its spec, its entry point and the module that declares them."""

    spec: PageSpec
    main: Callable[[], None]
    module: str


def discover(package: str = PACKAGE) -> list[Page]:
    """Every page module of ``package`` (names not starting with ``_``), in menu order.

    Raises ``TypeError`` for a module without a ``PAGE = PageSpec(...)`` or a ``main()``, and
    ``ValueError`` for two pages with the same key or order.
    """
    pkg = importlib.import_module(package)
    pages = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{package}.{info.name}")
        spec: Any = getattr(mod, "PAGE", None)
        main: Any = getattr(mod, "main", None)
        if not isinstance(spec, PageSpec) or not callable(main):
            raise TypeError(f"{mod.__name__}: a page module needs PAGE = PageSpec(...) and def main()")
        pages.append(Page(spec, main, mod.__name__))
    for attr in ("key", "order"):
        seen: dict[object, str] = {}
        for p in pages:
            value = getattr(p.spec, attr)
            if value in seen:
                raise ValueError(f"pages {seen[value]} and {p.module} share the {attr} {value!r}")
            seen[value] = p.module
    return sorted(pages, key=lambda p: p.spec.order)


def declared_params(pages: Iterable[Page]) -> set[str]:
    """The union of the URL parameters the pages declare."""
    return {k for p in pages for k in p.spec.params}


def check_params(pages: Iterable[Page], known: Iterable[str]) -> None:
    """Raise ``ValueError`` if a page declares a URL parameter the app does not keep (``known``)."""
    known = set(known)
    bad = [f"{p.module}: {k!r}" for p in pages for k in p.spec.params if k not in known]
    if bad:
        raise ValueError("URL parameters missing from explorer.state.PARAMS: " + ", ".join(bad))


def nav_page(page: Page) -> Any:
    """The ``st.Page`` of a discovered page (equal pages are interchangeable in ``st.page_link``)."""
    import streamlit as st

    s = page.spec
    return st.Page(page.main, title=s.title, icon=s.icon, url_path=s.key, default=s.key == HOME)


def find(key: str, package: str = PACKAGE) -> Page:
    """The discovered page with ``key`` (``KeyError`` if none)."""
    for p in discover(package):
        if p.spec.key == key:
            return p
    raise KeyError(key)
