"""The crawl stage: resumable listing, detail fan-out, atomic snapshot chunks, state and summary.

* :mod:`~stylus_docs.crawl.engine` – :class:`CrawlConfig`, :class:`CivitaiCrawler`,
  :class:`VersionFetcher`, :class:`HfCrawler` (plain Python, called by the Beam DoFns).
* :mod:`~stylus_docs.crawl.snapshot` – gzip JSONL chunks published atomically.
* :mod:`~stylus_docs.crawl.state` – ``state.json``, ``failures.jsonl``, duplicate registry.
* :mod:`~stylus_docs.crawl.summary` – the end-of-crawl summary.
* :mod:`~stylus_docs.crawl.delta` – delta crawls (``--previous``): fingerprints, carry-over ledger.
* :mod:`~stylus_docs.crawl.tombstones` – what changed since ``--previous``; tombstones.
"""

from stylus_docs.crawl.engine import CivitaiCrawler, CrawlConfig, HfCrawler, VersionFetcher

__all__ = ["CivitaiCrawler", "CrawlConfig", "HfCrawler", "VersionFetcher"]
