"""Evaluation of Stylus and StylusDocs (``stylus-docs eval``): CLIP score, FID/KID, dFID, retrieval
recall, the VLM judge and the paper's baselines (Table 1 / Figure 6).

Every model is read from a local path (nothing is downloaded); modules import torch lazily.

* :mod:`.clip` – CLIP score (open_clip, ``100 × max(cos, 0)``), optional best-of-N aggregation;
* :mod:`.fid` – Inception-v3 pool features (cached by image SHA-256), FID and unbiased KID;
* :mod:`.dfid` – per-prompt diversity (trace of the feature covariance), win rate;
* :mod:`.retrieval` – recall@k / MRR of the query module on labelled queries;
* :mod:`.judge` – the both-orders VLM judge over an OpenAI-compatible endpoint;
* :mod:`.run` – generate with Stylus / Retriever-only / Random / base and tabulate (+ Pareto plot).
"""
