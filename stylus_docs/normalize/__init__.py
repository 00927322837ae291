"""Normalization of raw API items of every era into :class:`~stylus_docs.records.AdapterCard`.

* :mod:`.civitai` – ``/models`` items (2023/2024/2025 shapes) and ``/model-versions`` details,
* :mod:`.huggingface` – HF listing items with their README card,
* :mod:`.text` – HTML / Markdown to clean text, :mod:`.lora` – ``<lora:name:w>`` tags,
  :mod:`.license` – license fields.
"""
