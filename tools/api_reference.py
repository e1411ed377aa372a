"""Griffe extensions for the API reference that ``mkdocs build`` renders (mkdocs.yml).

``SphinxRoles``
    The package's docstrings cross-reference with Sphinx roles
    (``:class:`~ratatoskr_client.server.RelayServer```, ``:meth:`connect```), which
    read well in ``help()`` and editors. mkdocstrings does not know them; this
    rewrites each into a cross-reference before rendering. A target that does
    not exist in the package fails ``mkdocs build --strict`` like any broken
    link; one that exists is a link where the reference renders it and plain
    code where it does not. Short targets (``connect``) resolve from the
    docstring's scope, as in Sphinx.

``PublicDocstrings``
    mkdocstrings silently leaves out an object without a docstring. This logs a
    warning (so ``--strict`` fails) for every public module, class, function,
    method or property without one. "Public" is decided by walking the whole
    package: every module whose dotted name has no ``_``-prefixed part, the
    names in its ``__all__``, and the members of those classes whose names do
    not start with ``_``. Data (constants, fields) is not required to have one.

tests/unit/test_api_reference.py runs the same checks without mkdocs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

# --------------------------------------------------------------------------- roles

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)\.?([^`]+)`")
# An RST paragraph ending in "::" introduces a literal block; Markdown wants ":".
_LITERAL_INTRO = re.compile(r"(\S)::$", re.M)


def resolve(target: str, scope: griffe.Object | None) -> str:
    """The full dotted path a role's ``target`` means in ``scope``, like Sphinx:
    a name found in the scope or an enclosing one (class, module, package)
    relative to it, anything else as written (a full path, or a broken one)."""
    first, dot, rest = target.partition(".")
    if dot and scope is not None and first == scope.package.name:
        return target  # a full path: the package's own name may also be a member's
    while scope is not None:
        member = scope.all_members.get(first)
        if member is not None:
            base = member.target_path if isinstance(member, griffe.Alias) else member.path
            return base + dot + rest
        scope = scope.parent
    return target


def exists(path: str, package: griffe.Module) -> bool:
    """Whether ``path`` names an object of ``package`` (or the package itself)."""
    first, _, rest = path.partition(".")
    if first != package.name:
        return False
    obj: griffe.Object | griffe.Alias = package
    for part in rest.split(".") if rest else ():
        try:
            # all_members: a class's inherited members too (RatatoskrClient gets
            # its properties and on/once/off from mixins).
            obj = obj.all_members[part]
        except (KeyError, griffe.AliasResolutionError):
            return False
    return True


def convert(text: str, scope: griffe.Object | None = None) -> str:
    """``text`` with every Sphinx role replaced by a mkdocstrings cross-reference,
    short targets resolved from ``scope`` (the object the docstring belongs to)."""

    def crossref(match: re.Match[str]) -> str:
        shorten, target = match.group(1), match.group(2)
        title = target.rsplit(".", 1)[-1] if shorten else target
        path = resolve(target, scope)
        if scope is not None and exists(path, scope.package):
            # A real object that the reference may not render (a private helper,
            # a constant): a link where it is rendered, plain code where not.
            return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'
        return f"[`{title}`][{path}]"  # must resolve: a broken one fails --strict

    return _LITERAL_INTRO.sub(r"\1:", _ROLE.sub(crossref, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every loaded docstring with :func:`convert`."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Convert every docstring of ``pkg`` once all of it is loaded (so names
        defined later in a module, or in another module, resolve)."""
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from _walk(member)


# --------------------------------------------------------------------------- docstrings

#: Public names that have no docstring yet, by canonical path. This list may
#: only shrink (the test fails when an entry gains a docstring, so that it is
#: removed here); it is empty since the client's core is made of components
#: (issue #20) instead of mixins with type-checking stubs.
KNOWN_GAPS: frozenset[str] = frozenset()


def public_modules(package: griffe.Module) -> Iterator[griffe.Module]:
    """``package`` and every submodule whose dotted name has no ``_``-prefixed part."""
    if any(part.startswith("_") for part in package.path.split(".")):
        return
    yield package
    for module in package.modules.values():
        if not module.is_alias:
            yield from public_modules(module)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def _needs_docstring(obj: griffe.Object) -> bool:
    return obj.is_module or obj.is_class or obj.is_function or "property" in obj.labels


def undocumented(package: griffe.Module) -> list[str]:
    """Canonical paths of the public objects of ``package`` that have no docstring."""
    public: dict[str, griffe.Object] = {}
    for module in public_modules(package):
        public[module.path] = module
        for name in module.exports or ():
            obj = _target(module.members[str(name)])
            public[obj.path] = obj
            if obj.is_class:
                for member_name, member in obj.members.items():
                    if not member_name.startswith("_") and not member.is_alias:
                        public[member.path] = _target(member)
    return sorted(
        path for path, obj in public.items() if _needs_docstring(obj) and not obj.docstring
    )


class PublicDocstrings(griffe.Extension):
    """Warns about every public object without a docstring (see the module doc)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Check ``pkg`` once it is loaded, with all its submodules."""
        for path in undocumented(pkg):
            if path not in KNOWN_GAPS:
                griffe.logger.warning(f"{path} is public and has no docstring")
