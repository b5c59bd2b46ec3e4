#!/usr/bin/env python3
"""Writes tokenizer.json here: a small byte-level BPE (Llama-3 pre-tokenizer, 256 byte symbols,
400 merges learnt from a text, three added tokens) for the BPE fuzz target and its seeds.

    python3 tests/data/tokenizer_bpe/make_tokenizer_json.py README.md docs/*.md

Standard library only. Deterministic: the same text gives the same file (ties in pair counts
go to the lexicographically smallest pair)."""
import collections
import json
import pathlib
import re
import sys

MERGES = 400
# Llama-3's pattern, as the file states it (the C++ side compiles it with PCRE2).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# An ASCII approximation for learning merges (Python's re has no \p{L}); only the merges depend
# on it, never how the C++ tokenizer splits text.
TRAIN_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\r\n\w]?[^\W\d_]+|\d{1,3}|"
                         r" ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_symbols():
    """GPT-2's byte-to-unicode alphabet."""
    printable = [b for b in range(256)
                 if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def learn_merges(text, count):
    sym = byte_symbols()
    words = collections.Counter(
        tuple(sym[b] for b in piece.encode("utf-8")) for piece in TRAIN_SPLIT.findall(text))
    merges = []
    for _ in range(count):
        pairs = collections.Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def main():
    text = "".join(pathlib.Path(p).read_text(encoding="utf-8") for p in sys.argv[1:])
    sym = byte_symbols()
    vocab = {sym[b]: b for b in range(256)}
    merges = learn_merges(text, MERGES)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    added = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": len(vocab) + i, "content": c, "special": True}
                         for i, c in enumerate(added)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [f"{l} {r}" for l, r in merges]},
    }
    out = pathlib.Path(__file__).resolve().parent / "tokenizer.json"
    out.write_text(json.dumps(tokenizer, ensure_ascii=False) + "\n", encoding="utf-8")
    config = {"bos_token": None, "eos_token": "<|endoftext|>"}
    (out.parent / "tokenizer_config.json").write_text(json.dumps(config) + "\n")


if __name__ == "__main__":
    main()
