"""The explorer's pages: one module per page, each with ``PAGE = PageSpec(...)`` and ``main()``.

Not named ``pages/``: Streamlit would treat that folder as its legacy auto-discovered multipage app.
:func:`explorer.page_spec.discover` finds every module here; see docs/explorer.md ("Adding a page").
"""
