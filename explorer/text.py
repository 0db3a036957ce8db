"""Showing strings from a cache, a URL or an upload as text, never as markup (pure; no Streamlit).

Class names, run and dataset names, method names, file paths, reviewer names and error messages
come from files a user did not write (a CSV's label column, a manifest, a URL). Wherever such a
string meets Streamlit markdown (``st.markdown``, ``st.caption``, ``st.title``, messages, widget
labels, image captions, tooltips), pass it through :func:`md_escape`, or :func:`md_code` inside
a code span: a label like ``![x](http://host/)`` then shows as those characters, and the viewer's
browser fetches nothing.
"""

from __future__ import annotations

import re

#: characters that start markup in GitHub markdown, Streamlit's directives (``:red[..]``,
#: ``:material/..:``), LaTeX (``$``) or HTML; replaced by numeric character references, which
#: markdown and HTML both show as the plain character (so the escape works inside HTML too)
_SPECIAL = "\\`*_[]<>&!~:$|#"
_TABLE = {ord(c): f"&#{ord(c)};" for c in _SPECIAL}
_LEADING = re.compile(r"^(\s*)([-+=]|\d+[.)])")  # a list item or setext underline at a line start
_SPACE = re.compile(r"[\r\n\t\f\v\u2028\u2029]+")
#: a bare URL that GitHub markdown would turn into a link (it does so after parsing, so character
#: references do not stop it): a word joiner (U+2060, invisible) after the scheme or ``www`` does
_BARE_URL = re.compile(r"(?i)\b(https?&#58;|www)(?=//|\.)")


def md_escape(value: object) -> str:
    """``value`` as markdown that renders as exactly its text (on one line)."""
    s = _BARE_URL.sub("\\1\u2060", _SPACE.sub(" ", str(value)).translate(_TABLE))
    m = _LEADING.match(s)
    if m:
        lead = m.group(2)
        s = m.group(1) + lead[:-1] + f"&#{ord(lead[-1])};" + s[m.end():]
    return s


def md_code(value: object) -> str:
    """``value`` as an inline code span (shown verbatim, backticks inside included)."""
    s = _SPACE.sub(" ", str(value))
    longest = max((len(r) for r in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()) else ""
    return f"{fence}{pad}{s}{pad}{fence}"
