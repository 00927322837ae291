"""The composer's rules, enforced in code whatever the composer (LLM or offline) proposed.

The reference code states its caps in the prompt and enforces almost none of them (its cached COCO
answers hold topics with 26 adapters). Here every proposal goes through :func:`enforce`:

* a topic must come from the prompt's words (a hallucinated topic is dropped with its adapters);
* an index must name a retrieved candidate (unknown indices are dropped);
* one base-model family per composition: an adapter of another family is dropped (the candidates are
  already restricted to the family, so this only catches a composer that invents indices);
* each adapter is used at most once, and one version of a model at most (two versions of one LoRA
  are the same adapter twice);
* NSFW adapters are dropped unless allowed;
* character / celebrity adapters only when the prompt names that character or person (or when
  ``include_characters`` is set) — never for generic people ("a man", "a girl"); see :class:`NameRules`;
* at most ``per_topic`` adapters per topic;
* at most ``max_style`` style adapters overall.

Proposals are taken in the composer's order, so the composer's first choices win the capped slots.
Every drop is recorded with a machine-readable ``reason``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from stylus_docs.compose.types import Candidate, ComposeSettings, RawTopic

log = logging.getLogger(__name__)

#: Categories that count as character / celebrity adapters (``records.CATEGORIES`` has the first two).
CHARACTER_CATEGORIES = frozenset({"character", "celebrity", "characters", "celebrities", "person"})
#: Card tags that mark a character or real-person adapter whatever its category says (Civitai's own
#: tags; a refiner may have called the card "clothing" because of a costume tag).
CHARACTER_TAGS = frozenset(
    {
        "character", "characters", "celebrity", "celebrities", "person", "real person", "game character",
        "anime character", "cartoon character", "actress", "actor", "vtuber", "influencer", "youtuber",
        "streamer", "av actress",
    }
)  # fmt: skip
STYLE_CATEGORIES = frozenset({"style", "styles", "art style"})

#: Words that carry no topic (articles, prepositions, auxiliaries, counts, spatial relations, framing).
STOPWORDS = frozenset(
    """a an the of on in at to for with without and or but from by into onto over under near beside
    behind above below between through across against along around up down out off is are was were be
    been being it its this that these those there here some any very while as his her their our your
    my one two three has have had do does did not no so than then who which what when where how
    four five six seven eight nine ten several many few couple group bunch pair lot lots variety number
    each other another various multiple both all next top front side middle center centre close inside
    outside together atop toward towards upon beneath underneath within past via
    sits stands holds looks appears shows showing wearing holding using looking having getting containing
    featuring including contains shown seen made
    photo photograph picture image view shot scene closeup""".split()
)
#: Generic people words: a character adapter is never justified by these alone.
GENERIC_PEOPLE = frozenset(
    """man men woman women girl girls boy boys person people guy guys lady ladies child children kid kids
    1girl 1boy 2girls 2boys 3girls multiple_girls solo human humans face portrait figure someone adult
    adults teen teens teenager teenagers baby babies toddler player players gentleman gentlemen female
    females male males couple family crowd individual individuals worker workers rider riders skier
    skiers surfer surfers skateboarder skateboarders student students chef chefs officer officers
    soldier soldiers police policeman nun priest bride groom mother father mom dad daughter son sister
    brother friend friends wife husband grandma grandpa elderly""".split()
)
#: Descriptive words trimmed from the ends of a name ("Young Zelda" names Zelda, not the young) and
#: never enough to name anyone on their own.
DESCRIPTORS = frozenset(
    """young old little small big tall short cute sexy hot beautiful pretty handsome fem fat thin slim
    anime realistic photorealistic photoreal semi real chibi mature teenage elderly japanese chinese
    korean asian european american
    style character characters celebrity cosplay costume outfit outfits uniform fanart art artwork
    lora locon lycoris loha lokr dora lyco model concept pack collection mix merge set edition version
    ver sd sdxl xl sd15 pony illustrious noobai flux ponyxl il nai original oc the of and for by with
    red blue green yellow black white brown blonde blond pink purple orange grey gray silver golden gold
    dark light hair eyes eye skin dress shirt skirt jacket hat shoes boots gloves ribbon bow""".split()
)
#: Title words that do not name anyone (kept for :func:`name_tokens`, the looser legacy helper).
_TITLE_NOISE = DESCRIPTORS | frozenset({"v1", "v2", "v3", "v4", "v5"})
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: Separators between the names of one title ("Hermione Granger – Emma Watson", "Zelda (Skyward Sword)").
_TITLE_SPLIT = re.compile(r"\s[-–—~]+\s|[|/\\()\[\]{}【】「」『』（）:;,+&＆・]|\s-|-\s|\bx\b|\bfeat\b", re.I)
#: Separators between the trigger words of one string ("1girl, princess zelda (botw)").
_TRIGGER_SPLIT = re.compile(r"[,;|/\\()\[\]{}:]+")
_LORA_TAG = re.compile(r"<[^>]*>")
#: Version suffixes: "v2", "v1.5", "ver 3", "version 2.0", "1.0".
_VERSION = re.compile(r"^(?:v|ver|version)?\d+(?:[._]\d+)*[a-z]?$|^v\d+\w*$", re.I)
#: Longest name phrase considered (a trigger string listing a whole outfit names no one).
MAX_NAME_WORDS = 6
#: A word in at least this many non-character models (titles, tags, trigger words, descriptions,
#: example prompts) is a common word of the catalogue, not a name.
COMMON_MIN_MODELS = 3


def model_key(adapter_id: str) -> str:
    """The model of an adapter version: ``civitai:12@34`` → ``civitai:12``."""
    return adapter_id.rsplit("@", 1)[0]


def words(text: str) -> list[str]:
    """Lowercased word tokens of ``text``."""
    return [w.lower() for w in _WORD.findall(text or "")]


def stem(word: str) -> str:
    """A light plural/possessive stem so "corgis" matches "corgi" (no NLP dependency)."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_stems(text: str) -> list[str]:
    """Stems of the non-stopword words of ``text``, in order."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]


def topic_in_prompt(topic: str, prompt: str) -> bool:
    """True when every content word of ``topic`` occurs in ``prompt`` (after stemming)."""
    topic_stems = content_stems(topic)
    if not topic_stems:
        return False
    prompt_stems = {stem(w) for w in words(prompt)}
    return all(s in prompt_stems for s in topic_stems)


def is_character(candidate: Candidate) -> bool:
    """Whether a candidate is a character or celebrity adapter: by its category or by its tags."""
    category = (candidate.category or "").strip().lower()
    if category in CHARACTER_CATEGORIES:
        return True
    return any(t.strip().lower() in CHARACTER_TAGS for t in candidate.tags)


def is_style(candidate: Candidate) -> bool:
    """Whether a candidate is a style adapter (by category, else by tags)."""
    category = (candidate.category or "").strip().lower()
    if category:
        return category in STYLE_CATEGORIES
    return any(t.strip().lower() in STYLE_CATEGORIES for t in candidate.tags)


def name_tokens(candidate: Candidate) -> set[str]:
    """Stems of a character adapter's title and trigger words minus noise (a loose, descriptive helper;
    the rule itself is :meth:`NameRules.named`)."""
    tokens: set[str] = set()
    for text in [candidate.title, *candidate.trigger_words]:
        for w in words(text):
            if len(w) < 3 or w.isdigit() or w in STOPWORDS or w in _TITLE_NOISE or w in GENERIC_PEOPLE:
                continue
            tokens.add(stem(w))
    return tokens


# -- naming ------------------------------------------------------------------------------------------
_GENERIC = STOPWORDS | GENERIC_PEOPLE | DESCRIPTORS


def _trim(tokens: list[str]) -> tuple[str, ...]:
    """Drop version suffixes anywhere and descriptive / generic words at both ends."""
    toks = [t for t in tokens if not _VERSION.match(t)]
    while toks and (toks[0] in _GENERIC):
        toks.pop(0)
    while toks and (toks[-1] in _GENERIC):
        toks.pop()
    return tuple(toks[:MAX_NAME_WORDS]) if len(toks) <= MAX_NAME_WORDS else ()


#: Words inside a title piece that join a name to something else ("Emma Watson for Comics", "Emma
#: Watson as Hermione"): the parts either side are names too.
_NAME_JOINERS = frozenset({"for", "by", "as", "in", "with", "from", "and", "x", "feat", "ft", "vs"})


def name_phrases(candidate: Candidate) -> list[tuple[tuple[str, ...], str]]:
    """The names a character adapter answers to: ``[(words, "title" | "title_part" | "trigger"), ...]``.

    Title pieces: the title split at separators (" – ", "|", "/", brackets, ":" …), version suffixes
    ("v2", "1.0") dropped, descriptive words trimmed from the ends; title parts: a piece split again at
    joining words ("for", "as", "by" …). Trigger pieces: each trained word split at commas and
    brackets, ``<lora:…>`` tags removed, trimmed the same way.
    """
    out: list[tuple[tuple[str, ...], str]] = []
    seen: set[tuple[str, ...]] = set()

    def add(name: tuple[str, ...], source: str) -> None:
        if name and name not in seen:
            seen.add(name)
            out.append((name, source))

    for piece in _TITLE_SPLIT.split(candidate.title or ""):
        toks = words(piece)
        add(_trim(toks), "title")
        part: list[str] = []
        for w in [*toks, "for"]:
            if w in _NAME_JOINERS:
                if part and len(part) < len(toks):
                    add(_trim(part), "title_part")
                part = []
            else:
                part.append(w)
    for trigger in candidate.trigger_words:
        for piece in _TRIGGER_SPLIT.split(_LORA_TAG.sub(" ", trigger or "")):
            add(_trim(words(piece)), "trigger")
    return out


@dataclass(slots=True)
class PromptWords:
    """The prompt as lowercase tokens, with the tokens written as proper nouns (capitalised, not the
    first word of a sentence)."""

    tokens: list[str]
    proper: list[bool]

    @classmethod
    def of(cls, prompt: str) -> PromptWords:
        tokens: list[str] = []
        proper: list[bool] = []
        sentence_start = True
        pos = 0
        for m in _WORD.finditer(prompt or ""):
            gap = prompt[pos : m.start()]
            if re.search(r"[.!?\n]", gap):
                sentence_start = True
            word = m.group(0)
            tokens.append(word.lower())
            proper.append(word[:1].isupper() and not sentence_start)
            sentence_start = False
            pos = m.end()
        return cls(tokens, proper)

    def find(self, phrase: tuple[str, ...]) -> list[int]:
        """Start positions where ``phrase`` occurs as whole, consecutive words."""
        n = len(phrase)
        return [i for i in range(len(self.tokens) - n + 1) if tuple(self.tokens[i : i + n]) == phrase]


class NameRules:
    """Decides whether a prompt names the character or person of an adapter.

    A name is one of :func:`name_phrases`, found in the prompt as whole words, case-insensitively:

    * made only of generic words ("young girl", "woman", "brown hair", "1girl") — never a name;
    * holding a word that is not common — a name ("hermione granger", "zelda", "sksw"); for the title
      that one word is enough ("Hermione reading" names "Fonglets Hermione Granger");
    * made of common words only: a multi-word title piece still is ("emma watson", "princess peach" —
      the whole phrase is specific, and so is a part of it split at "for", "as" …: "Emma Watson for
      Comics"); a one-word title piece ("launch", "rose", "nun") only when the
      prompt writes it as a proper noun (capitalised, not sentence-initial); a trigger piece never
      (creators list outfits and props there: "christmas", "red bow", "long hair").

    Common words: :data:`DESCRIPTORS` and the generic lists; the words of at least
    :data:`COMMON_MIN_MODELS` non-character models of the release — for trigger pieces counting their
    example prompts too (that is where "blindfold" or "bowtie" shows up in many models), for title
    pieces only their cards (a style LoRA whose examples draw Zelda does not make "zelda" a common
    word); and, when the MiniLM tokenizer is installed (it ships with the default query encoder), the
    whole English words of its vocabulary.

    Args:
        common: the release's common words (:func:`catalogue_common_words` without example prompts).
        english: extra common words (default: the MiniLM vocabulary when available).
        trigger_common: further words common for trigger pieces (the example prompts' words).
    """

    def __init__(
        self,
        common: Iterable[str] = (),
        english: Iterable[str] | None = None,
        trigger_common: Iterable[str] = (),
    ) -> None:
        self.common = frozenset(common) | (english_words() if english is None else frozenset(english))
        self.trigger_common = self.common | frozenset(trigger_common)

    def _distinct(self, word: str, common: frozenset[str]) -> bool:
        return not (word in _GENERIC or word in common or word.isdigit())

    def named(self, candidate: Candidate, prompt: str | PromptWords) -> str | None:
        """The name of ``candidate`` the prompt uses, or None when the prompt names no such person."""
        pw = prompt if isinstance(prompt, PromptWords) else PromptWords.of(prompt)
        present = set(pw.tokens)
        for phrase, source in name_phrases(candidate):
            if all(w in _GENERIC or w.isdigit() for w in phrase):
                continue
            if source != "trigger":
                # A distinctive word of the title names its subject on its own ("Hermione reading"
                # for "Fonglets Hermione Granger").
                word = next(
                    (w for w in phrase if len(w) >= 3 and w in present and self._distinct(w, self.common)),
                    None,
                )
                if word is not None:
                    return word
            starts = pw.find(phrase)
            if not starts:
                continue
            common = self.trigger_common if source == "trigger" else self.common
            if any(self._distinct(w, common) for w in phrase):
                return " ".join(phrase)
            if source == "trigger":  # trigger lists are full of ordinary words ("christmas", "red bow")
                continue
            if len(phrase) >= 2 or (source == "title" and any(pw.proper[i] for i in starts)):
                return " ".join(phrase)
        return None


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Whole words of the MiniLM (BERT uncased) vocabulary, or an empty set when it is not installed."""
    try:
        from stylus_docs.embedding.minilm import default_minilm_dir
        from stylus_docs.errors import FatalError

        try:
            path = default_minilm_dir() / "tokenizer.json"
        except FatalError:
            return frozenset()
        vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (ImportError, OSError, KeyError, TypeError, ValueError) as exc:
        log.info("no English vocabulary for the naming rule (%s); using the catalogue's words only", exc)
        return frozenset()
    return frozenset(w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 2)


def catalogue_common_words(
    rows: Iterable[dict[str, Any]], min_models: int = COMMON_MIN_MODELS
) -> tuple[set[str], set[str]]:
    """Words of the catalogue, not anyone's name: ``(in the cards, in the cards or example prompts)`` of
    at least ``min_models`` distinct non-character models (cards: titles, tags, trigger words,
    descriptions; example prompts when the rows carry them)."""
    cards: dict[str, set[str]] = {}
    prompts: dict[str, set[str]] = {}
    for row in rows:
        cand = Candidate(
            index=0,
            adapter_id=str(row.get("adapter_id") or ""),
            category=(row.get("category") or "").strip().lower(),
            tags=list(row.get("tags") or []),
        )
        if is_character(cand):
            continue
        model = model_key(cand.adapter_id)
        bag = cards.setdefault(model, set())
        texts = [row.get("title") or "", *(row.get("tags") or []), *(row.get("trigger_words") or [])]
        texts.append(row.get("refined_description") or row.get("description") or "")
        for text in texts:
            bag.update(words(str(text)))
        more = prompts.setdefault(model, set())
        for text in row.get("example_prompts") or []:
            more.update(words(str(text)))

    def frequent(bags: Iterable[set[str]]) -> set[str]:
        counts: dict[str, int] = {}
        for bag in bags:
            for w in bag:
                counts[w] = counts.get(w, 0) + 1
        return {w for w, n in counts.items() if n >= min_models}

    return frequent(cards.values()), frequent(cards[m] | prompts.get(m, set()) for m in cards)


def character_allowed(
    candidate: Candidate, prompt: str | PromptWords, settings: ComposeSettings, names: NameRules
) -> bool:
    """True unless ``candidate`` is a character/celebrity adapter the prompt does not name."""
    return (
        settings.include_characters
        or not is_character(candidate)
        or names.named(candidate, prompt) is not None
    )


def _drop(
    reason: str, detail: str, topic: str | None, index: Any = None, adapter_id: str | None = None
) -> dict:
    return {"reason": reason, "topic": topic, "index": index, "adapter_id": adapter_id, "detail": detail}


def _as_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def enforce(
    prompt: str,
    proposal: Sequence[RawTopic],
    candidates: Sequence[Candidate],
    settings: ComposeSettings,
    *,
    family: str | None = None,
    names: NameRules | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply every rule to a composer's proposal.

    Args:
        prompt: the user's prompt.
        proposal: topics with candidate indices and reasons, in the composer's order of preference.
        candidates: the retrieved catalogue (indexed by :attr:`Candidate.index`).
        settings: caps and switches.
        family: the composition's base-model family; adapters of another family are dropped (None: no
            family check).
        names: the naming rule for character adapters (default: built-in word lists only).

    Returns:
        ``(topics, dropped)``: topics as output dicts (``{"topic", "adapters": [{"adapter_id", "title",
        "category", "recommended_weight", "reason"}]}``) and one dict per dropped topic or adapter with
        ``reason``, ``topic``, ``index``, ``adapter_id`` and ``detail``.
    """
    names = names or NameRules()
    pw = PromptWords.of(prompt)
    by_index = {c.index: c for c in candidates}
    topics: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    dropped: list[dict[str, Any]] = []
    used: dict[str, str] = {}
    used_models: dict[str, str] = {}
    styles = 0
    for raw in proposal:
        name = " ".join((raw.topic or "").split())
        if not topic_in_prompt(name, prompt):
            dropped.append(
                _drop("topic_not_in_prompt", f"topic {name!r} is not made of the prompt's words", name)
            )
            for item in raw.adapters:
                cand = by_index.get(_as_index(item.index))
                dropped.append(
                    _drop(
                        "topic_not_in_prompt",
                        "its topic was dropped",
                        name,
                        item.index,
                        cand and cand.adapter_id,
                    )
                )
            continue
        key = " ".join(content_stems(name))
        out = by_name.get(key)
        if out is None:  # the same topic twice is merged, not dropped
            out = {"topic": name, "adapters": []}
            by_name[key] = out
            topics.append(out)
        for item in raw.adapters:
            idx = _as_index(item.index)
            cand = by_index.get(idx) if idx is not None else None
            if cand is None:
                dropped.append(
                    _drop("unknown_index", f"index {item.index!r} is not in the catalogue", name, item.index)
                )
                continue
            aid = cand.adapter_id
            if family is not None and cand.family != family:
                dropped.append(
                    _drop(
                        "other_base_family",
                        f"base model {cand.base_model or '?'} ({cand.family or 'no family'}) is not of the "
                        f"composition's family {family}",
                        name,
                        idx,
                        aid,
                    )
                )
                continue
            if aid in used:
                dropped.append(
                    _drop("duplicate_adapter", f"already used for topic {used[aid]!r}", name, idx, aid)
                )
                continue
            if model_key(aid) in used_models:
                dropped.append(
                    _drop(
                        "duplicate_adapter",
                        f"another version of this model is already used ({used_models[model_key(aid)]})",
                        name,
                        idx,
                        aid,
                    )
                )
                continue
            if cand.nsfw and not settings.include_nsfw:
                dropped.append(_drop("nsfw", "NSFW adapters are excluded", name, idx, aid))
                continue
            if not character_allowed(cand, pw, settings, names):
                dropped.append(
                    _drop(
                        "character_not_requested",
                        f"{cand.category or 'character'} adapter; the prompt names no such person",
                        name,
                        idx,
                        aid,
                    )
                )
                continue
            if len(out["adapters"]) >= settings.per_topic:
                dropped.append(
                    _drop(
                        "over_topic_cap", f"topic already has {settings.per_topic} adapters", name, idx, aid
                    )
                )
                continue
            if is_style(cand) and styles >= settings.max_style:
                dropped.append(
                    _drop("style_cap", f"at most {settings.max_style} style adapters overall", name, idx, aid)
                )
                continue
            styles += is_style(cand)
            used[aid] = name
            used_models[model_key(aid)] = aid
            out["adapters"].append(
                {
                    "adapter_id": aid,
                    "title": cand.title,
                    "category": cand.category,
                    "recommended_weight": cand.recommended_weight,
                    "reason": " ".join((item.reason or "").split())[:300],
                }
            )
    return topics, dropped
