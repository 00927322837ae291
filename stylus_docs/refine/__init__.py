"""Refiners: turn a normalized card into a concise description, a category and a recommended weight.

* :mod:`.extractive` (default, ``extractive@v1``) – rules over the card itself, no model;
* :mod:`.openai_vlm` (``openai@v2``) – any OpenAI-compatible chat endpoint through Beam RunInference.

:mod:`.rules` holds the weight and category rules both use.
"""

from stylus_docs.refine.extractive import EXTRACTIVE_NAME, EXTRACTIVE_VERSION, refine_extractive

__all__ = ["EXTRACTIVE_NAME", "EXTRACTIVE_VERSION", "refine_extractive"]
