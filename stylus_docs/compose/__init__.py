"""The Stylus composer: prompt → topics → adapters, with every rule enforced in code.

Public API::

    from stylus_docs.compose import Composer, ComposeSettings, compose
    composer = Composer("DOCS", ComposeSettings(composer="offline"), cache_dir="~/.cache/stylus")
    result = composer.compose("a graffiti of a corgi on the wall")

See :mod:`stylus_docs.compose.core` for the output format, :mod:`.rules` for the rules,
:mod:`.offline` and :mod:`.llm` for the two composers.
"""

from stylus_docs.compose.core import Composer, CompositionCache, cache_key, compose, validate_output
from stylus_docs.compose.llm import InvalidAnswer, LLMUnavailable, OpenAIComposerClient
from stylus_docs.compose.types import Candidate, ComposeSettings, RawAssignment, RawTopic

__all__ = [
    "Candidate",
    "ComposeSettings",
    "Composer",
    "CompositionCache",
    "InvalidAnswer",
    "LLMUnavailable",
    "OpenAIComposerClient",
    "RawAssignment",
    "RawTopic",
    "cache_key",
    "compose",
    "validate_output",
]
