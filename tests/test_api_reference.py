"""The API reference cannot drift: every public name has a docstring, and the pdoc build succeeds.

:data:`PUBLIC_MODULES` is the one declared list of callvault's public Python API. The reference
(HTML, pdoc) is built from exactly these modules, by the test below into a temporary directory and
by ``make docs`` into ``docs/api/`` through the same :func:`build` (``python
tests/test_api_reference.py docs/api``), so what the test checks is what the reference shows.

A module's public names are its ``__all__`` when it declares one, else the classes and functions it
defines whose names do not start with ``_``. Every such class and function defined in callvault,
and every public method and property of those classes (dataclasses included; dunders skipped), must
have a docstring of its own. Names imported from outside callvault are not checked.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

PUBLIC_MODULES = [
    "callvault",
    "callvault.commands",
    "callvault.config",
    "callvault.db",
    "callvault.bootstrap",
    "callvault.errors",
    "callvault.plan",
    "callvault.lifecycle",
    "callvault.maintain",
    "callvault.monitor",
    "callvault.metrics",
    "callvault.citus",
    "callvault.history",
    "callvault.ingest.instrument",
    "callvault.ingest.reasons",
    "callvault.explain",
    "callvault.embedded",
    "callvault.archive.pipeline",
    "callvault.archive.reader",
    "callvault.archive.restore",
    "callvault.archive.prune",
    "callvault.query",
    "callvault.ingest",
    "callvault.tenancy",
    "callvault.privacy.subject",
    "callvault.privacy.holds",
    "callvault.privacy.erase",
]


def _ours(obj: object) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "callvault"


def _has_doc(obj: object) -> bool:
    return bool((getattr(obj, "__doc__", None) or "").strip())


def _class_doc(cls: type) -> bool:
    doc = (vars(cls).get("__doc__") or "").strip()
    # a dataclass (or NamedTuple) without a docstring gets its signature as one: "Name(field: type, ...)"
    return bool(doc) and not doc.startswith(f"{cls.__name__}(")


def public_names(module: ModuleType) -> dict[str, object]:
    """The classes and functions ``module`` offers: its ``__all__``, else what it defines itself."""
    declared = getattr(module, "__all__", None)
    if declared is not None:
        found = {name: getattr(module, name) for name in declared}
    else:
        found = {name: obj for name, obj in vars(module).items() if getattr(obj, "__module__", None) == module.__name__}
    return {
        name: obj
        for name, obj in found.items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and _ours(obj)
    }


def undocumented(modname: str) -> list[str]:
    """Every public name of ``modname`` (``Class.method`` for members) without a docstring of its own."""
    module = importlib.import_module(modname)
    missing = [] if _has_doc(module) else ["(module docstring)"]
    for name, obj in sorted(public_names(module).items()):
        if inspect.isfunction(obj):
            if not _has_doc(obj):
                missing.append(name)
            continue
        assert isinstance(obj, type)
        if not _class_doc(obj):
            missing.append(name)
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            elif not inspect.isfunction(member) and not hasattr(member, "func"):  # functools.cached_property
                continue
            if not _has_doc(member):
                missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_public_names_have_docstrings(modname: str) -> None:
    missing = undocumented(modname)
    assert not missing, f"{modname}: no docstring on {', '.join(missing)}"


def build(out: Path) -> list[str]:
    """Write the HTML reference of :data:`PUBLIC_MODULES` (and no other module) into ``out``.

    Returns the problems: pdoc's own warnings (a module that fails to import, an annotation it cannot
    resolve...) and any warning raised from callvault's code while pdoc imports it."""
    import pdoc
    import pdoc.render

    pdoc_dir = str(Path(pdoc.__file__).parent)
    here = str(Path(importlib.import_module("callvault").__file__ or "").parent)
    pdoc.render.configure(docformat="restructuredtext", show_source=False, footer_text="callvault")
    only_these = "!(?!(?:" + "|".join(re.escape(m) for m in PUBLIC_MODULES) + ")$)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*PUBLIC_MODULES, only_these, output_directory=out)
    return [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if w.filename.startswith(pdoc_dir) or w.filename.startswith(here)
    ]


def test_reference_builds(tmp_path: Path) -> None:
    problems = build(tmp_path)
    assert not problems, "\n".join(problems)
    pages = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html"))
    expected = sorted([f"{m.replace('.', '/')}.html" for m in PUBLIC_MODULES] + ["index.html"])
    assert pages == expected


if __name__ == "__main__":  # make docs: python tests/test_api_reference.py docs/api
    found = build(Path(sys.argv[1]))
    for problem in found:
        print(problem, file=sys.stderr)
    sys.exit(1 if found else 0)
