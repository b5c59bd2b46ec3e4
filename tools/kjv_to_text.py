#!/usr/bin/env python3
"""Long training documents (issue 28): the King James Version from Debian's bible-kjv, one
document per line. `bible -f "Gen1:1-Rev22:21"` prints every verse as `<book><chapter>:<verse>
<text>`; a book is one document, cut at chapter ends into pieces of at most MAX_WORDS words so
that one piece is about the length of the longest evaluation documents (8k-12k tokens).
Usage: kjv_to_text.py VERSES OUT.txt"""
import re
import sys

MAX_WORDS = 7000
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def chapters(lines):
    """[(book, [chapter text, ...]), ...] in the order printed."""
    books, key = [], None
    for line in lines:
        m = VERSE.match(line.rstrip("\n"))
        if not m:
            raise SystemExit(f"not a verse line: {line[:80]!r}")
        book, chapter, _, text = m.groups()
        if not books or books[-1][0] != book:
            books.append((book, []))
            key = None
        if chapter != key:
            books[-1][1].append([])
            key = chapter
        books[-1][1][-1].append(text.strip())
    return [(book, [" ".join(c) for c in chs]) for book, chs in books]


def pieces(chs):
    piece, words = [], 0
    for c in chs:
        n = len(c.split())
        if piece and words + n > MAX_WORDS:
            yield " ".join(piece)
            piece, words = [], 0
        piece.append(c)
        words += n
    if piece:
        yield " ".join(piece)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        books = chapters(f)
    docs = [p for _, chs in books for p in pieces(chs)]
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for d in docs:
            out.write(d + "\n")
    words = [len(d.split()) for d in docs]
    print(f"{len(books)} books, {len(docs)} documents, {sum(words)} words, "
          f"{sum(w >= 4000 for w in words)} of 4000+ words")


if __name__ == "__main__":
    main()
