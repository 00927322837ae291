"""Normalization of raw API items of every era into :class:`~stylus_docs.records.AdapterCard`.

* :mod:`.civitai` – ``/models`` items (2023/2024/2025 shapes) and ``/model-versions`` details,
* :mod:`.huggingface` – HF listing items with their README card,
* :mod:`.text` – HTML / Markdown to clean text, :mod:`.lora` – ``<lora:name:w>`` tags,
  :mod:`.license` – license fields,
* :mod:`.raw` – finding and reading the snapshot's data files,
* :mod:`.deletions` – the snapshot's tombstones and the adapter ids they cover,
* :mod:`.base_models` – the saved ``/api/v1/enums`` base-model names and the family table.
"""
