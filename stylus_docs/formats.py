"""What an adapter file is, from its safetensors header alone (``stylus-docs inspect``).

Civitai calls every adapter a "LoRA", but the files are LoRA, LoCon, LoHa, LoKr, DoRA, textual inversions
and now and then a full checkpoint. diffusers' ``load_lora_weights`` loads LoRA, LoCon and DoRA (diffusers
/ PEFT or Kohya keys) and ``load_textual_inversion`` loads embeddings; LoHa and LoKr (LyCORIS) are not
loaded for SD 1.x/2.x, SDXL or Flux.1 pipelines. :func:`inspect_file` tells them apart by reading only the
header (validated by :func:`stylus_docs.safetensors_check.validate_safetensors`): key names and tensor
shapes, never a tensor's bytes. Pickle formats (``.ckpt``, ``.pt``, ``.bin`` …) are refused by name and
never opened.

The rules, first match wins:

* ``hada_w1_a`` / ``hada_w2_b`` … → ``loha``; ``lokr_w1`` / ``lokr_w2`` … → ``lokr``; other LyCORIS
  algorithms (OFT, BOFT, IA3, GLoRA, full "diff") → ``unknown`` naming the algorithm;
* LoRA tensors (``lora_down``/``lora_up``, ``lora_A``/``lora_B``, ``lora.down``, ``lora_linear_layer``)
  with ``dora_scale`` or ``lora_magnitude_vector`` → ``dora``; on a convolution (a resnet, a
  down/upsampler, or a kernel larger than 1×1) → ``locon``; otherwise ``lora``;
* no adapter tensor, one or two 1-D/2-D tensors named ``emb_params``, ``clip_l``/``clip_g``,
  ``string_to_param.*`` or a single token → ``textual_inversion``;
* original-layout weights (``model.diffusion_model.*``, ``first_stage_model.*`` …) or many plain
  ``.weight`` tensors → ``checkpoint``; anything else → ``unknown``.

The base family is guessed from shapes first (the UNet's cross-attention context width: 768 SD 1.5,
1024 SD 2.x, 2048 SDXL; the text encoder's width), then key names (Flux's double/single blocks, SDXL's
second text encoder, SDXL's deeper transformer stacks), then Kohya / modelspec metadata.
"""

from __future__ import annotations

import re
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stylus_docs.safetensors_check import (
    SafetensorsHeader,
    TensorInfo,
    UnsafeWeightsError,
    refuse_unsafe_format,
    validate_safetensors,
)

#: Every value of :attr:`AdapterFormat.format`.
FORMATS: tuple[str, ...] = (
    "lora",
    "locon",
    "loha",
    "lokr",
    "dora",
    "textual_inversion",
    "checkpoint",
    "unknown",
)
#: Formats diffusers loads into SD 1.x/2.x, SDXL and Flux.1 pipelines.
LOADABLE_FORMATS: frozenset[str] = frozenset({"lora", "locon", "dora", "textual_inversion"})
#: Every value of :attr:`AdapterFormat.convention`.
CONVENTIONS: tuple[str, ...] = ("diffusers", "peft", "kohya", "unknown")
#: Every value of :attr:`AdapterFormat.base_family`.
BASE_FAMILIES: tuple[str, ...] = ("SD 1.5", "SD 2.x", "SDXL", "Flux", "unknown")
#: :data:`BASE_FAMILIES` in the architecture vocabulary of :mod:`stylus_docs.diffusion.family`.
ARCHITECTURE_OF_BASE_FAMILY: dict[str, str] = {
    "SD 1.5": "sd15",
    "SD 2.x": "sd2",
    "SDXL": "sdxl",
    "Flux": "flux",
}
#: Every block kind :attr:`AdapterFormat.blocks` can list.
BLOCK_KINDS: tuple[str, ...] = ("attn", "ff", "conv", "resnet", "other")
#: ``render_status`` of a file the render stage must not try to load.
UNSUPPORTED_STATUS = "unsupported_format"

REASON_LOHA = "LoHa is not supported by diffusers' load_lora_weights"
REASON_LOKR = "LoKr is not supported by diffusers' load_lora_weights for SD 1.x/2.x, SDXL or Flux.1"
REASON_CHECKPOINT = "full checkpoint, not an adapter"
REASON_PICKLE = "pickle format refused"
REASON_NOT_SAFETENSORS = "not a .safetensors file"
REASON_NO_FILE = "no such file"
REASON_NOT_FILE = "not a file"

# Cross-attention context width (in-features of attn2.to_k / to_v) → family.
_CONTEXT_FAMILY = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL"}
# Text-encoder width (in-features of its q/k/v projections) → family; SDXL's first encoder is 768 wide
# too, which is why a second text encoder is looked for first.
_TEXT_FAMILY = {768: "SD 1.5", 1024: "SD 2.x"}
# Original-layout (LDM / SGM) checkpoint prefixes.
_CHECKPOINT_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
    "model_ema.",
)
# Plain-weight files with no adapter tensor and more tensors than this are full model weights.
_CHECKPOINT_MIN_TENSORS = 16
# More vectors than this in one "embedding" is not a textual inversion.
_MAX_TI_VECTORS = 256

# An adapter tensor name: ``<module>.<param>``. The lazy module keeps the longest param suffix.
_PARAM_RE = re.compile(
    r"^(?P<module>.+?)\.(?P<param>"
    r"lora_down\.weight|lora_up\.weight|lora_mid\.weight"
    r"|lora\.down\.weight|lora\.up\.weight"
    r"|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight"
    r"|lora_A(?:\.[^.]+)?\.weight|lora_B(?:\.[^.]+)?\.weight|lora_magnitude_vector(?:\.[^.]+)?"
    r"|hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2"
    r"|lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2"
    r"|oft_blocks|oft_diag|oft_r(?:\.weight)?|boft_r|boft_s|on_input"
    r"|a1\.weight|a2\.weight|b1\.weight|b2\.weight|diff|diff_b"
    r"|alpha|dora_scale|scale|w_norm|b_norm"
    r")$",
    re.IGNORECASE,
)
# Old diffusers attention-processor LoRA: ``…attn1.processor.to_q_lora.down.weight``.
_PROCESSOR_RE = re.compile(r"^(?P<module>.+)_lora\.(?P<dir>down|up)\.weight$")

_DOWN_PARAMS = frozenset(
    {"lora_down.weight", "lora.down.weight", "lora_linear_layer.down.weight", "lora_a.weight"}
)
_LORA_PARAMS = _DOWN_PARAMS | {
    "lora_up.weight",
    "lora.up.weight",
    "lora_linear_layer.up.weight",
    "lora_b.weight",
    "lora_mid.weight",
}
# Other LyCORIS / PEFT algorithms: marker param → name used in the reason.
_OTHER_ALGOS = (
    (frozenset({"oft_blocks", "oft_diag", "oft_r", "oft_r.weight"}), "OFT"),
    (frozenset({"boft_r", "boft_s"}), "BOFT"),
    (frozenset({"on_input"}), "IA3"),
    (frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"}), "GLoRA"),
    (frozenset({"diff", "diff_b"}), "a full-weight difference (LyCORIS 'full')"),
)
# Kohya / LyCORIS module-name prefixes (longest first) → component.
_KOHYA_PREFIXES = (
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"),
    ("lora_te_", "text_encoder"),
    ("lora_unet_", "unet"),
    ("lora_transformer_", "transformer"),
    ("lycoris_", "unet"),
)
_DOTTED_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")
_FLUX_MARKERS = ("single_transformer_blocks", "double_blocks", "single_blocks")


@dataclass(slots=True)
class AdapterFormat:
    """What one weights file is, as far as its header tells.

    Args:
        path: The path as given.
        format: One of :data:`FORMATS`.
        convention: Key convention, one of :data:`CONVENTIONS`.
        rank: Largest LoRA/LoHa/LoKr rank among the adapted layers; None when it has none (textual
            inversion, checkpoint, LoKr with full factors, unreadable files).
        targets: Component → number of adapted layers (``unet``, ``text_encoder``, ``text_encoder_2``,
            ``transformer``; ``other`` for names that fit none).
        blocks: Kinds of adapted layers, sorted (``attn``, ``ff``, ``conv``, ``resnet``, ``other``).
        base_family: One of :data:`BASE_FAMILIES`.
        base_family_evidence: What the family guess rests on (a shape, a key, metadata), or "".
        loadable: Whether diffusers can load it (:data:`LOADABLE_FORMATS`, readable, valid header).
        reason: Why not, when ``loadable`` is false; None otherwise.
        tensors: Number of tensors in the header.
        vectors: Textual inversion: embedding vectors (per text encoder); None otherwise.
        token: Textual inversion: the token to put into the prompt (the key of a diffusers embedding,
            else the file stem, as A1111 does); None otherwise.
        inspected: False when the file could not be read at all (missing, not a file, I/O error).
    """

    path: str
    format: str = "unknown"
    convention: str = "unknown"
    rank: int | None = None
    targets: dict[str, int] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    base_family: str = "unknown"
    base_family_evidence: str = ""
    loadable: bool = False
    reason: str | None = None
    tensors: int = 0
    vectors: int | None = None
    token: str | None = None
    inspected: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {FORMATS}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention {self.convention!r} is not one of {CONVENTIONS}")
        if self.base_family not in BASE_FAMILIES:
            raise ValueError(f"base_family {self.base_family!r} is not one of {BASE_FAMILIES}")

    @property
    def loader(self) -> str | None:
        """The diffusers pipeline method that loads this file, or None when none does."""
        if not self.loadable:
            return None
        return "load_textual_inversion" if self.format == "textual_inversion" else "load_lora_weights"

    @property
    def architecture(self) -> str | None:
        """:attr:`base_family` as a render/generate architecture (``sd15``, ``sdxl`` …); None if unknown."""
        return ARCHITECTURE_OF_BASE_FAMILY.get(self.base_family)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``stylus-docs inspect --format json`` object)."""
        out = asdict(self)
        out["architecture"] = self.architecture
        out["loader"] = self.loader
        return out


def render_verdict(fmt: AdapterFormat) -> tuple[bool, str, str]:
    """Whether the render / generate stages may load ``fmt``'s file.

    Returns:
        ``(True, "ok", "")`` for a loadable file (see :attr:`AdapterFormat.loader` for how), else
        ``(False, "unsupported_format", reason)`` — LoHa, LoKr, checkpoints, unknown files, pickle
        formats and bad headers alike, so the caller records a status instead of crashing in diffusers.
    """
    if fmt.loadable:
        return True, "ok", ""
    return False, UNSUPPORTED_STATUS, fmt.reason or f"{fmt.format} is not a loadable adapter format"


def inspect_file(path: str | Path) -> AdapterFormat:
    """Classify the weights file at ``path`` from its safetensors header.

    Never raises for a bad file: a missing file, a pickle format, a non-safetensors name or a header
    refused by :func:`~stylus_docs.safetensors_check.validate_safetensors` each come back as
    ``loadable=False`` with the reason (``inspected=False`` when the file could not be read).

    Args:
        path: The file.

    Returns:
        The verdict.
    """
    shown = str(path)
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return AdapterFormat(shown, reason=REASON_NO_FILE, inspected=False)
    except OSError as exc:
        return AdapterFormat(shown, reason=f"cannot read: {exc.strerror or exc}", inspected=False)
    if not stat.S_ISREG(mode):
        return AdapterFormat(shown, reason=REASON_NOT_FILE, inspected=False)
    try:
        refuse_unsafe_format(p.name)
    except UnsafeWeightsError as exc:
        if exc.reason == "pickle_format":
            # By name only: unpickling runs code, and even peeking is not worth it. ``.ckpt`` is the
            # full-checkpoint suffix; ``.pt``/``.bin`` hold anything (embeddings, LoRAs, models).
            kind = "checkpoint" if p.suffix.lower() == ".ckpt" else "unknown"
            return AdapterFormat(shown, format=kind, reason=f"{REASON_PICKLE} ({p.suffix.lower()})")
        return AdapterFormat(shown, reason=REASON_NOT_SAFETENSORS)
    try:
        header = validate_safetensors(p)
    except UnsafeWeightsError as exc:
        return AdapterFormat(shown, reason=f"{exc.reason}: {exc.detail}")
    except OSError as exc:
        return AdapterFormat(shown, reason=f"cannot read: {exc.strerror or exc}", inspected=False)
    return classify_header(header, shown)


# --------------------------------------------------------------------------------------- classification


@dataclass(slots=True)
class _Module:
    """The adapter tensors of one adapted layer."""

    name: str
    params: dict[str, TensorInfo] = field(default_factory=dict)


def classify_header(header: SafetensorsHeader, path: str = "") -> AdapterFormat:
    """Classify a validated header (the pure part of :func:`inspect_file`).

    Args:
        header: From :func:`~stylus_docs.safetensors_check.validate_safetensors`.
        path: Reported as :attr:`AdapterFormat.path` (also the textual-inversion token's fallback).

    Returns:
        The verdict.
    """
    modules, plain = _group_modules(header.tensors)
    n = len(header.tensors)
    if not modules:
        return _classify_plain(header, plain, path)

    params = {p for m in modules.values() for p in m.params}
    convention = _convention(modules)
    targets = Counter(_component(name) for name in modules)
    kinds = {name: _block_kind(name) for name in modules}
    family, evidence = _family_of_adapter(modules, targets, header.metadata)
    common: dict[str, Any] = {
        "path": path,
        "convention": convention,
        "rank": _rank(modules.values()),
        "targets": dict(sorted(targets.items())),
        "blocks": sorted(set(kinds.values())),
        "base_family": family,
        "base_family_evidence": evidence,
        "tensors": n,
    }
    if params & {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}:
        return AdapterFormat(format="loha", reason=REASON_LOHA, **common)
    if params & {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}:
        return AdapterFormat(format="lokr", reason=REASON_LOKR, **common)
    for markers, algo in _OTHER_ALGOS:
        if params & markers:
            reason = f"{algo} is not a supported adapter format"
            return AdapterFormat(format="unknown", reason=reason, **common)
    if not params & _LORA_PARAMS:
        return AdapterFormat(format="unknown", reason="no LoRA tensor in the file", **common)
    if params & {"dora_scale"} or any(p.startswith("lora_magnitude_vector") for p in params):
        fmt = "dora"
    elif any(kinds[name] in ("conv", "resnet") or _has_spatial_kernel(m) for name, m in modules.items()):
        fmt = "locon"
    else:
        fmt = "lora"
    return AdapterFormat(format=fmt, loadable=True, **common)


def _group_modules(tensors: Mapping[str, TensorInfo]) -> tuple[dict[str, _Module], dict[str, TensorInfo]]:
    """Split tensor names into adapted modules (by param suffix) and plain tensors."""
    modules: dict[str, _Module] = {}
    plain: dict[str, TensorInfo] = {}
    for key, info in tensors.items():
        match = _PROCESSOR_RE.match(key)
        if match:
            name, param = match["module"], f"lora.{match['dir']}.weight"
        else:
            match = _PARAM_RE.match(key)
            if not match:
                plain[key] = info
                continue
            name, param = match["module"], match["param"].lower()
            if param.startswith(("lora_a.", "lora_b.")):
                param = param[:7] + "weight"  # drop a PEFT adapter name: lora_A.default.weight
        modules.setdefault(name, _Module(name)).params[param] = info
    # A bare ``alpha``/``scale`` next to no adapter tensor belongs to nothing we know.
    for name in [n for n, m in modules.items() if set(m.params) <= {"alpha", "scale", "w_norm", "b_norm"}]:
        for param, info in modules.pop(name).params.items():
            plain[f"{name}.{param}"] = info
    return modules, plain


def _convention(modules: Mapping[str, _Module]) -> str:
    votes: Counter[str] = Counter()
    for name, module in modules.items():
        params = set(module.params)
        if name.startswith(tuple(prefix for prefix, _ in _KOHYA_PREFIXES)) and "." not in name:
            votes["kohya"] += 1
        elif params & {"lora_a.weight", "lora_b.weight"} or any(
            p.startswith("lora_magnitude_vector") for p in params
        ):
            votes["peft"] += 1
        elif params & {"lora.down.weight", "lora.up.weight", "lora_linear_layer.down.weight"}:
            votes["diffusers"] += 1
        elif "." in name:
            votes["peft"] += 1  # dotted module names with LyCORIS params: PEFT's LoHa / LoKr
        else:
            votes["unknown"] += 1
    return votes.most_common(1)[0][0] if votes else "unknown"


def _component(name: str) -> str:
    """Which pipeline component a module name belongs to."""
    for prefix, component in _KOHYA_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if component == "unet" and rest.startswith(("double_blocks", "single_blocks")):
                return "transformer"  # Kohya's Flux LoRAs keep the lora_unet_ prefix
            return component
    head, _, rest = name.partition(".")
    if head == "base_model" and rest.startswith("model."):
        name = rest[len("model.") :]
        head, _, rest = name.partition(".")
    if head in _DOTTED_COMPONENTS:
        return head
    if head == "diffusion_model":
        return "transformer" if rest.startswith(_FLUX_MARKERS) else "unet"
    if re.match(r"(down_blocks|up_blocks|mid_block|input_blocks|middle_block|output_blocks)\.", name):
        return "unet"
    if name.startswith(("text_model.", "encoder.layers.")):
        return "text_encoder"
    if name.startswith(("transformer_blocks.", "single_transformer_blocks.", "double_blocks.")):
        return "transformer"
    return "other"


def _block_kind(name: str) -> str:
    """``attn``, ``ff``, ``conv``, ``resnet`` or ``other`` from a (dotted or Kohya) module name."""
    s = "_" + name.lower().replace(".", "_") + "_"
    if any(t in s for t in ("_resnets_", "_in_layers_", "_out_layers_", "_emb_layers_", "_skip_connection_")):
        return "resnet"
    if any(
        t in s
        for t in ("_ff_", "_mlp_", "_fc1_", "_fc2_", "_linear1_", "_linear2_", "_proj_mlp_", "_ff_context_")
    ) or re.search(r"_(img|txt)_mlp_", s):
        return "ff"
    if "attn" in s or any(
        t in s
        for t in (
            "_to_q_",
            "_to_k_",
            "_to_v_",
            "_to_out_",
            "_q_proj_",
            "_k_proj_",
            "_v_proj_",
            "_out_proj_",
            "_proj_in_",
            "_proj_out_",
            "_qkv_",
        )
    ):
        return "attn"
    if "conv" in s or "_downsamplers_" in s or "_upsamplers_" in s or re.search(r"_op_$", s):
        return "conv"
    return "other"


def _has_spatial_kernel(module: _Module) -> bool:
    """A 4-D down tensor with a kernel larger than 1×1: a LoRA on a real convolution (LoCon)."""
    for param in _DOWN_PARAMS:
        info = module.params.get(param)
        if info is not None and len(info.shape) == 4 and info.shape[2] * info.shape[3] > 1:
            return True
    return False


def _module_rank(module: _Module) -> int | None:
    p = module.params
    for param in _DOWN_PARAMS:
        if param in p and p[param].shape:
            return p[param].shape[0]
    if "hada_w1_b" in p and p["hada_w1_b"].shape:
        return p["hada_w1_b"].shape[0]
    if "hada_w1_a" in p and len(p["hada_w1_a"].shape) >= 2:
        return p["hada_w1_a"].shape[1]
    for param in ("lokr_w2_a", "lokr_w1_a"):  # low-rank factors [n, r]; full factors have no rank
        if param in p and len(p[param].shape) >= 2:
            return p[param].shape[1]
    return None


def _rank(modules: Iterable[_Module]) -> int | None:
    ranks = [r for r in (_module_rank(m) for m in modules) if r is not None]
    return max(ranks) if ranks else None


def _in_features(module: _Module) -> int | None:
    """Input width of the adapted layer, from the factor that multiplies the input."""
    p = module.params
    for param in _DOWN_PARAMS:
        if param in p and len(p[param].shape) >= 2:
            return p[param].shape[1]
    if "hada_w1_b" in p and len(p["hada_w1_b"].shape) == 2:
        return p["hada_w1_b"].shape[1]
    # LoKr: W = kron(w1, w2), so in = in(w1) × in(w2); a factor is full or split into _a @ _b.
    widths = []
    for factor in ("lokr_w1", "lokr_w2"):
        whole = p.get(factor) or p.get(f"{factor}_b")
        if whole is None or len(whole.shape) != 2:
            return None
        widths.append(whole.shape[1])
    return widths[0] * widths[1]


def _family_of_adapter(
    modules: Mapping[str, _Module], targets: Mapping[str, int], metadata: Mapping[str, str]
) -> tuple[str, str]:
    names = list(modules)
    flux = next((n for n in names if any(m in n for m in _FLUX_MARKERS)), None)
    if flux is not None:
        return "Flux", f"Flux transformer key {flux!r}"
    for name, module in modules.items():
        s = "_" + name.lower().replace(".", "_") + "_"
        if "_attn2_" in s and ("_to_k_" in s or "_to_v_" in s):
            width = _in_features(module)
            if width in _CONTEXT_FAMILY:
                return _CONTEXT_FAMILY[width], f"cross-attention context width {width} ({name})"
    if targets.get("text_encoder_2"):
        return "SDXL", "second text encoder (text_encoder_2 / lora_te2_ keys)"
    deep = next(
        (n for n in names if _component(n) == "unet" and re.search(r"transformer_blocks[._][1-9]", n)), None
    )
    if deep is not None:
        return "SDXL", f"UNet transformer depth > 1 ({deep})"
    for name, module in modules.items():
        if _component(name) == "text_encoder" and re.search(r"[qkv]_proj", name):
            width = _in_features(module)
            if width in _TEXT_FAMILY:
                return _TEXT_FAMILY[width], f"text-encoder width {width} ({name})"
    family = _family_from_metadata(metadata)
    if family is not None:
        return family
    widths = sorted(
        {
            w
            for name, m in modules.items()
            if "attn2" in name.replace(".", "_") and (w := _in_features(m)) is not None
        }
    )
    if widths:
        return "unknown", f"cross-attention context width {widths[0]} fits no known family"
    return "unknown", ""


def _family_from_metadata(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """Kohya's ``ss_base_model_version`` / ``ss_v2`` or modelspec's architecture (shapes said nothing)."""
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = (metadata.get(key) or "").lower()
        if not value:
            continue
        for needle, family in (
            ("flux", "Flux"),
            ("sdxl", "SDXL"),
            ("stable-diffusion-xl", "SDXL"),
            ("sd_v2", "SD 2.x"),
            ("stable-diffusion-v2", "SD 2.x"),
            ("sd_v1", "SD 1.5"),
            ("stable-diffusion-v1", "SD 1.5"),
        ):
            if needle in value:
                return family, f"metadata {key}={metadata[key][:60]!r}"
    if (metadata.get("ss_v2") or "").lower() == "true":
        return "SD 2.x", "metadata ss_v2=True"
    return None


def _classify_plain(header: SafetensorsHeader, plain: Mapping[str, TensorInfo], path: str) -> AdapterFormat:
    """A file with no adapter tensor: a textual inversion, a checkpoint, or unknown."""
    n = len(header.tensors)
    if n == 0:
        return AdapterFormat(path, reason="the file holds no tensors")
    ti = _textual_inversion(plain, path)
    if ti is not None:
        return ti
    keys = list(plain)
    ldm = next((k for k in keys if k.startswith(_CHECKPOINT_PREFIXES)), None)
    weights = sum(1 for k in keys if k.endswith((".weight", ".bias")))
    if ldm is not None or weights > _CHECKPOINT_MIN_TENSORS:
        family, evidence = _family_of_checkpoint(plain)
        convention = "diffusers" if ldm is None and _component(keys[0]) != "other" else "unknown"
        return AdapterFormat(
            path,
            format="checkpoint",
            convention=convention,
            base_family=family,
            base_family_evidence=evidence,
            reason=REASON_CHECKPOINT,
            tensors=n,
        )
    return AdapterFormat(path, reason="no adapter tensor recognised", tensors=n)


def _textual_inversion(plain: Mapping[str, TensorInfo], path: str) -> AdapterFormat | None:
    # A1111's layout keeps the token's id beside the vectors; it says nothing about the embedding.
    keys = set(plain) - {"string_to_token"}
    if not 1 <= len(keys) <= 2 or any(len(plain[k].shape) not in (1, 2) for k in keys):
        return None

    def vectors(info: TensorInfo) -> int:
        return info.shape[0] if len(info.shape) == 2 else 1

    stem = Path(path).stem if path else None
    if keys == {"clip_l", "clip_g"} or keys == {"clip_g"}:
        family = ("SDXL", f"SDXL embedding (clip_g width {plain['clip_g'].shape[-1]})")
        key, convention, token = "clip_g", "kohya", stem
    elif len(keys) == 1:
        (key,) = keys
        if key == "emb_params" or key.startswith("string_to_param"):
            convention, token = "kohya", stem
        else:
            convention, token = "diffusers", key  # diffusers' learned_embeds: {"<token>": [n, dim]}
        width = plain[key].shape[-1]
        fam = _TEXT_FAMILY.get(width)
        if fam is not None:
            family = (fam, f"embedding width {width}")
        else:
            family = ("unknown", f"embedding width {width} fits no known family")
    else:
        return None
    if vectors(plain[key]) > _MAX_TI_VECTORS:
        return None
    if keys == {"clip_l", "clip_g"}:
        targets = {"text_encoder": 1, "text_encoder_2": 1}
    elif key == "clip_g":
        targets = {"text_encoder_2": 1}
    else:
        targets = {"text_encoder": 1}
    return AdapterFormat(
        path,
        format="textual_inversion",
        convention=convention,
        targets=targets,
        base_family=family[0],
        base_family_evidence=family[1],
        loadable=True,
        tensors=len(plain),
        vectors=vectors(plain[key]),
        token=token,
    )


def _family_of_checkpoint(plain: Mapping[str, TensorInfo]) -> tuple[str, str]:
    keys = list(plain)
    flux = next((k for k in keys if any(m in k for m in _FLUX_MARKERS)), None)
    if flux is not None:
        return "Flux", f"Flux transformer key {flux!r}"
    for key, info in plain.items():
        if re.search(r"attn2[._]to_[kv][._]weight$", key) and len(info.shape) == 2:
            width = info.shape[1]
            if width in _CONTEXT_FAMILY:
                return _CONTEXT_FAMILY[width], f"cross-attention context width {width} ({key})"
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "SDXL", "second text encoder (conditioner.embedders.1)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "SD 2.x", "OpenCLIP text encoder (cond_stage_model.model)"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "SD 1.5", "CLIP text encoder (cond_stage_model.transformer)"
    return "unknown", ""
