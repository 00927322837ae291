"""Search a StylusDocs release: hybrid dense + BM25 ranking, structured filters, sandboxed SQL.

>>> from stylus_docs.query import open_release
>>> release = open_release("data/out/docs")            # doctest: +SKIP
>>> hits = release.search("a corgi graffiti", k=10, base_model="SD 1.5")  # doctest: +SKIP
"""

from stylus_docs.query.core import Filters, Hit, Release, SearchConfig, open_release

__all__ = ["Filters", "Hit", "Release", "SearchConfig", "open_release"]
