"""Sphinx configuration for the dualdiff documentation.

Build (the command CI runs; it must finish with no warnings, also offline)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Environment switches
--------------------
``DUALDIFF_DOCS_NO_GALLERY=1``
    Render the example gallery without executing the scripts (quick builds). Equivalent to
    ``-D plot_gallery=0`` on the command line.
``DUALDIFF_DOCS_INTERSPHINX=auto|online|offline``
    ``auto`` (default) links to the Python / PyTorch / NumPy / SciPy docs when their
    inventories can be read: from ``docs/_intersphinx/<name>-objects.inv`` if that file exists,
    else from the web if the host answers within two seconds. Unreachable projects are skipped
    with an informational message instead of a warning, so ``-W`` builds pass without a
    network. ``online`` always tries the web (a failure is then a warning); ``offline`` uses
    only the local files.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Prefer the installed package (editable install in development); fall back to the source tree.
try:
    import dualdiff
except ImportError:  # pragma: no cover - docs built from a bare checkout
    sys.path.insert(0, str(ROOT / "src"))
    import dualdiff

# One intra-op thread for the whole build, the gallery examples included (they run in this
# process): the examples' tensors are tiny, and on a busy machine torch's thread pool makes
# such operations tens of times slower instead of faster.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency of dualdiff
    pass

# Headless plotting for autodoc imports and the gallery.
os.environ.setdefault("MPLBACKEND", "agg")
try:
    import matplotlib

    matplotlib.use("agg")
except ImportError:  # pragma: no cover - matplotlib is in the [docs] extra
    pass

# -- Project information -----------------------------------------------------------------
project = "dualdiff"
author = "dualdiff developers"
copyright = "2026, dualdiff developers"
release = dualdiff.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "_intersphinx"]
root_doc = "index"
default_role = "py:obj"  # numpydoc convention: `name` in a docstring links to an object
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- autodoc / autosummary / napoleon ----------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True  # with the setting above: one "Return type" per object
napoleon_use_ivar = True
napoleon_include_init_with_doc = False


def _prefer_init_signatures() -> None:
    """Document ``__init__``'s signature for classes that dispatch in ``__new__``.

    ``KLConstrainedProblem.__new__(cls, *args, direction=..., **kwargs)`` picks the RU/FU
    subclass; Python's ``inspect.signature`` (hence autodoc) would otherwise show that generic
    ``(*args, **kwargs)`` instead of the real parameters. Only affects the docs process, and
    only classes that do not set ``__signature__`` themselves.
    """
    import inspect

    for name in getattr(dualdiff, "__all__", []):
        obj = getattr(dualdiff, name, None)
        if not inspect.isclass(obj) or "__signature__" in vars(obj):
            continue
        if obj.__new__ is object.__new__ or obj.__init__ is object.__init__:
            continue
        try:
            init_sig = inspect.signature(obj.__init__)
        except (TypeError, ValueError):
            continue
        params = list(init_sig.parameters.values())[1:]  # drop self
        obj.__signature__ = init_sig.replace(parameters=params)  # type: ignore[attr-defined]


_prefer_init_signatures()

# -- maths -------------------------------------------------------------------------------
# Macros shared by the narrative pages (docstrings should spell things out in full).
mathjax3_config = {
    "tex": {
        "macros": {
            "KL": r"\operatorname{KL}",
            "E": r"\mathbb{E}",
            "R": r"\mathbb{R}",
            "ess": r"\operatorname*{ess\,inf}",
            "esssup": r"\operatorname*{ess\,sup}",
            "argmin": r"\operatorname*{arg\,min}",
            "argmax": r"\operatorname*{arg\,max}",
        }
    }
}

# -- intersphinx (never fails offline, see module docstring) -----------------------------
_INTERSPHINX_TARGETS = {
    "python": "https://docs.python.org/3/",
    "torch": "https://pytorch.org/docs/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
}
_INTERSPHINX_DIR = HERE / "_intersphinx"
_docs_messages: list[str] = []


def _reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``url``'s host (or the configured HTTPS proxy) opens."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    parsed = urllib.parse.urlparse(proxy or url)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores the socket timeout, hence the thread with a bounded join.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def _intersphinx_mapping() -> dict[str, tuple[str, tuple[str | None, ...]]]:
    mode = os.environ.get("DUALDIFF_DOCS_INTERSPHINX", "auto").strip().lower()
    if mode not in {"auto", "online", "offline"}:
        raise ValueError(
            "docs/conf.py: environment variable DUALDIFF_DOCS_INTERSPHINX must be 'auto', "
            f"'online' or 'offline', got {mode!r}"
        )
    mapping: dict[str, tuple[str, tuple[str | None, ...]]] = {}
    for name, url in _INTERSPHINX_TARGETS.items():
        locations: list[str | None] = []
        local = _INTERSPHINX_DIR / f"{name}-objects.inv"
        if local.is_file():
            locations.append(str(local))
        if mode == "online" or (mode == "auto" and _reachable(url)):
            locations.append(None)
        if locations:
            mapping[name] = (url, tuple(locations))
        else:
            _docs_messages.append(
                f"intersphinx: no inventory for {name!r} ({url} unreachable and no "
                f"{local.relative_to(ROOT)}); cross-references to it stay plain text"
            )
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 5
intersphinx_cache_limit = 30  # days

# -- sphinx-gallery ----------------------------------------------------------------------
_NO_GALLERY = os.environ.get("DUALDIFF_DOCS_NO_GALLERY", "").strip().lower() not in {
    "",
    "0",
    "false",
    "no",
}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(plot|example)_",
    "ignore_pattern": r"__init__\.py|/_",
    "plot_gallery": "False" if _NO_GALLERY else "True",
    "within_subsection_order": "FileNameSortKey",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("dualdiff",),
    "image_scrapers": ("matplotlib",),
    "remove_config_comments": True,
    "download_all_examples": False,
    "min_reported_time": 1,
}

# -- HTML --------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"dualdiff {release}"
html_short_title = "dualdiff"
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False

# -- CHANGELOG.md -> reStructuredText ----------------------------------------------------
# myst is not a docs dependency; CHANGELOG.md follows "Keep a Changelog", whose markdown
# subset (headings, bullets, inline code, emphasis, links) converts to reST in a few lines.
# If the converted text does not parse cleanly, the page falls back to a literal block, so
# an unusual edit to the changelog can never break a -W build.
_CHANGELOG = ROOT / "CHANGELOG.md"
_CHANGELOG_MARK = ".. dualdiff-changelog-goes-here"
_LINK_DEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*(\S+)\s*$")
_INLINE_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_INLINE_CODE = re.compile(r"`([^`]+)`")


def _md_inline(text: str, links: dict[str, str]) -> str:
    stash: list[str] = []

    def keep(rst: str) -> str:
        stash.append(rst)
        return f"\x00{len(stash) - 1}\x00"

    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("_", "\\_")

    # Code spans and links first, so that escaping never touches code or URLs.
    text = _INLINE_CODE.sub(lambda m: keep(f"``{m.group(1)}``"), text)
    text = _INLINE_LINK.sub(lambda m: keep(f"`{escape(m.group(1))} <{m.group(2)}>`__"), text)

    def ref_link(m: re.Match[str]) -> str:
        url = links.get(m.group(1).lower())
        return keep(f"`{escape(m.group(1))} <{url}>`__") if url else m.group(1)

    text = re.sub(r"\[([^\]]+)\](?!\()", ref_link, text)
    text = escape(text)
    return re.sub("\x00(\\d+)\x00", lambda m: stash[int(m.group(1))], text)


def _markdown_to_rst(md: str) -> str:
    lines = md.splitlines()
    links = {m.group(1).lower(): m.group(2) for m in (_LINK_DEF.match(ln) for ln in lines) if m}
    out: list[str] = []
    prev_indent: int | None = None
    underline = {2: "-", 3: "~", 4: "^"}
    for raw in lines:
        if _LINK_DEF.match(raw):
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", raw)
        if heading:
            level = len(heading.group(1))
            prev_indent = None
            if level == 1:  # the page has its own title
                continue
            title = _md_inline(heading.group(2), links)
            out += ["", title, underline.get(level, "^") * max(len(title), 3), ""]
            continue
        bullet = re.match(r"^(\s*)[-*+]\s+(.*)$", raw)
        if bullet:
            indent = len(bullet.group(1).expandtabs(4))
            if prev_indent is None or indent != prev_indent:
                out.append("")  # reST nested lists need blank lines around them
            out.append(" " * indent + "- " + _md_inline(bullet.group(2), links))
            prev_indent = indent
            continue
        if not raw.strip():
            out.append("")
            prev_indent = None
            continue
        if prev_indent is not None:  # continuation of a bullet
            out.append(" " * (prev_indent + 2) + _md_inline(raw.strip(), links))
            continue
        out.append(_md_inline(raw.strip(), links))
    return "\n".join(out).strip() + "\n"


def _parses_cleanly(rst: str) -> bool:
    from docutils import nodes
    from docutils.core import publish_doctree

    try:
        tree = publish_doctree(
            rst, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False}
        )
    except Exception:
        return False
    return not any(msg["level"] >= 2 for msg in tree.findall(nodes.system_message))


def _changelog_rst() -> str:
    if not _CHANGELOG.is_file():
        return "*CHANGELOG.md is missing from this checkout.*\n"
    md = _CHANGELOG.read_text(encoding="utf-8")
    rst = _markdown_to_rst(md)
    if _parses_cleanly(rst):
        return rst
    _docs_messages.append("changelog: CHANGELOG.md shown verbatim (markdown did not convert)")
    return ".. literalinclude:: ../CHANGELOG.md\n   :language: markdown\n"


def _inject_changelog(app: Any, docname: str, source: list[str]) -> None:
    if docname == "changelog" and _CHANGELOG_MARK in source[0]:
        source[0] = source[0].replace(_CHANGELOG_MARK, _changelog_rst())


# -- api.rst: the command line's --help, generated from the code -------------------------
_CLI_MARK = ".. dualdiff-cli-help-goes-here"


def _cli_help_rst() -> str:
    """``--help`` of ``dualdiff`` and each subcommand, as literal blocks (always current)."""
    import argparse

    from dualdiff.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width
    try:
        parser = build_parser()
        blocks = [("dualdiff --help", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.append((f"dualdiff {name} --help", sub.format_help()))
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    out = []
    for title, text in blocks:
        body = "\n".join("   " + line if line.strip() else "" for line in text.splitlines())
        out.append(f".. code-block:: text\n   :caption: ``{title}``\n\n{body}\n")
    return "\n".join(out)


def _inject_api(app: Any, docname: str, source: list[str]) -> None:
    if docname != "api":
        return
    if _CLI_MARK in source[0]:
        source[0] = source[0].replace(_CLI_MARK, _cli_help_rst())


# -- docstring pre-processing (before napoleon) -----------------------------------------
_SECTION_RULE = re.compile(r"^\s*-{3,}\s*$")
_COMBINED_NAMES = re.compile(r"^(\s*)(\w+(?:\s*,\s*\w+)+)(\s*:.*)?$")
_SENTENCE_COLON = re.compile(r"^([^:`]*?\s[^:`]*?):\s+(\S.*)$")


def _split_combined_attributes(lines: list[str]) -> None:
    """Give each name of a combined ``a, b, c`` entry of an *Attributes* section its own entry.

    numpydoc allows one description for several names. napoleon supports that in
    *Parameters* but renders an *Attributes* entry ``a, b, c`` (with ``napoleon_use_ivar``) as
    ``:ivar a, b, c:``, which Sphinx reads as a variable ``b, c`` of *type* ``a``.
    """
    out: list[str] = []
    i, in_attributes, base = 0, False, 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _SECTION_RULE.match(nxt):  # a section header
            in_attributes = line.strip() == "Attributes"
            base = len(line) - len(line.lstrip())
            out += [line, nxt]
            i += 2
            continue
        m = _COMBINED_NAMES.match(line) if in_attributes else None
        if m and len(m.group(1)) == base:
            j = i + 1
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base
            ):
                j += 1
            body = lines[i + 1 : j]
            for name in (n.strip() for n in m.group(2).split(",")):
                out.append(f"{m.group(1)}{name}{m.group(3) or ''}")
                out += body
            i = j
            continue
        out.append(line)
        i += 1
    lines[:] = out


def _protect_sentence_colon(what: str, lines: list[str]) -> None:
    """Stop napoleon from reading ``Some sentence: details`` on an attribute as ``type: text``.

    For attribute and property docstrings napoleon treats the text before the first colon as
    the attribute's type. When that text is a phrase (it contains spaces), render the colon as
    a dash instead.
    """
    if what not in ("attribute", "property", "data") or not lines:
        return
    m = _SENTENCE_COLON.match(lines[0])
    if m and " " in m.group(1).strip():
        lines[0] = f"{m.group(1).rstrip()} — {m.group(2)}"


def _preprocess_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    _protect_sentence_colon(what, lines)
    _split_combined_attributes(lines)


def _skip_namedtuple_aliases(
    app: Any, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Hide the auto-generated "Alias for field number N" members of NamedTuples.

    The fields are documented in the class's *Attributes* section already.
    """
    doc = getattr(obj, "__doc__", None) or ""
    if re.fullmatch(r"Alias for field number \d+", doc.strip()):
        return True
    return None


# -- cross-references to re-exported names ------------------------------------------------
def _resolve_reexport(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``dualdiff.sub.module.Name[.attr]`` to the documented ``dualdiff.Name[.attr]``.

    Docstrings refer to objects by their defining module (``dualdiff.engine.ConstraintEstimate``,
    ``dualdiff.models.GaussianMixture``), while this site documents names exported by the
    top-level package under ``dualdiff.<Name>``. A reference is redirected only when the
    shortened target is documented and ``dualdiff.<Name>`` is the very same object.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("dualdiff."):
        return None
    import importlib

    parts = target.split(".")
    domain = env.get_domain("py")
    for k in range(2, len(parts)):
        candidate = "dualdiff." + ".".join(parts[k:])
        if candidate not in domain.objects:
            continue
        try:
            owner = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        exported = getattr(dualdiff, parts[k], None)
        if exported is None or getattr(owner, parts[k], None) is not exported:
            continue
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode
        )
    return None


def _resolve_short_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve an unqualified ``Name`` (or ``Name.attr``) in a dualdiff docstring.

    A docstring written in module ``dualdiff.engine.trainer`` says ``StepRecord`` or
    ``ode_log_likelihood``; the object may be documented as ``dualdiff.engine.StepRecord`` or
    ``dualdiff.ode_log_likelihood``. Resolve when exactly one documented ``dualdiff`` object
    has that dotted suffix; otherwise leave the reference alone.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip(".~")
    if not target or target.startswith("dualdiff."):
        return None
    module = node.get("py:module") or ""
    if not module.startswith("dualdiff"):
        return None
    domain = env.get_domain("py")
    suffix = "." + target
    # autodoc also registers each object under its canonical (defining-module) name: count
    # distinct objects, and link to the non-aliased entry
    found: dict[tuple[str, str], str] = {}
    for name, entry in domain.objects.items():
        if name.startswith("dualdiff.") and name.endswith(suffix):
            key = (entry.docname, entry.node_id)
            if key not in found or not entry.aliased:
                found[key] = name
    if len(found) != 1:
        return None
    (match,) = found.values()
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], match, node, contnode
    )


def setup(app: Any) -> dict[str, Any]:
    from sphinx.util import logging

    logger = logging.getLogger("dualdiff-docs")
    for message in _docs_messages:
        logger.info(message)
    if _NO_GALLERY:
        logger.info("sphinx-gallery: DUALDIFF_DOCS_NO_GALLERY is set, examples are not run")
    app.connect("source-read", _inject_changelog)
    app.connect("source-read", _inject_api)
    app.connect("missing-reference", _resolve_reexport)
    app.connect("missing-reference", _resolve_short_name)
    # priority < 500: before napoleon turns the numpy sections into reST fields
    app.connect("autodoc-process-docstring", _preprocess_docstring, priority=400)
    app.connect("autodoc-skip-member", _skip_namedtuple_aliases)
    app.connect("builder-inited", _report_undocumented_api)
    return {"parallel_read_safe": True}


def _report_undocumented_api(app: Any) -> None:
    """List public names missing from api.rst (informational: the API is still growing)."""
    from sphinx.util import logging

    text = (HERE / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s{3,}~?(?:dualdiff\.)?([A-Za-z_][\w.]*)\s*$", text, re.M))
    public = {n for n in getattr(dualdiff, "__all__", []) if not n.startswith("_")}
    missing = sorted(public - listed)
    if missing:
        logging.getLogger("dualdiff-docs").info(
            "api.rst does not list these names from dualdiff.__all__ yet: " + ", ".join(missing)
        )
