"""Fails the docs build when a public name has no API entry or a name is wrong.

Every name in ``jax_aldsgd.__all__``, and every name in the ``__all__`` of its
public submodules (``schedules``, ``topologies``, ``compressors``,
``exchange``), must be documented by some ``py:`` directive (``autofunction``,
``autoclass``, ``automodule``, ...) somewhere in the docs. A name passes when
its qualified name is documented, or when the very same object is documented
under another name (``jax_aldsgd.schedules.Schedule`` is
``jax_aldsgd.Schedule``). A missing one is a warning, which ``-W`` (docs/build.sh)
turns into an error.

It also resolves the docstrings' single-backtick names (the default role is
``py:obj``): a bare ``full`` in `gossip`'s docstring links to
``jax_aldsgd.schedules.full`` if that is the only public object of that name;
a name that exists only in a private module (``_compat.REFUSED``) is shown
as code without a link; a name that exists nowhere stays a warning.
"""

from __future__ import annotations

import importlib
import pathlib
import types

from sphinx.util import logging
from sphinx.util.nodes import make_refnode

logger = logging.getLogger(__name__)

PACKAGE = "jax_aldsgd"


def _resolve(fullname: str):
  """The object a dotted name documents, or None if it does not import."""
  parts = fullname.split(".")
  for cut in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ImportError:
      continue
    try:
      for attr in parts[cut:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None
    return obj
  return None


def public_names() -> list[str]:
  """Every public name: the package's ``__all__`` and its submodules'."""
  package = importlib.import_module(PACKAGE)
  names = [f"{PACKAGE}.{name}" for name in package.__all__]
  for name in package.__all__:
    module = getattr(package, name)
    if isinstance(module, types.ModuleType):
      names += [f"{PACKAGE}.{name}.{member}" for member in module.__all__]
  return names


SEARCH = ("", "schedules.", "topologies.", "compressors.", "exchange.")


def _private_modules():
  package = importlib.import_module(PACKAGE)
  root = pathlib.Path(package.__file__).parent
  return [
    importlib.import_module(f"{PACKAGE}.{path.stem}")
    for path in sorted(root.glob("_*.py"))
    if path.stem != "__init__"
  ]


def resolve_reference(app, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"].lstrip("~.")
  if not target or " " in target:
    return None
  objects = env.get_domain("py").objects
  here = node.get("py:module") or PACKAGE
  candidates = [f"{here}.{target}", target]
  candidates += [f"{PACKAGE}.{prefix}{target}" for prefix in SEARCH]
  for name in candidates:
    if name in objects:
      return make_refnode(
        app.builder,
        node["refdoc"],
        objects[name].docname,
        objects[name].node_id,
        contnode,
        name,
      )
  # A name of the package's private code: real, but not part of the API.
  if _resolve(target if target.startswith(PACKAGE) else f"{PACKAGE}.{target}"):
    return contnode
  for module in _private_modules():
    obj = module
    try:
      for attr in target.split("."):
        obj = getattr(obj, attr)
    except AttributeError:
      continue
    return contnode
  return None


def check(app, env) -> None:
  objects = env.get_domain("py").objects
  documented = set(objects)
  same = {id(_resolve(name)) for name in documented} - {id(None)}
  missing = [
    name
    for name in public_names()
    if name not in documented and id(_resolve(name)) not in same
  ]
  for name in missing:
    logger.warning(
      "public name %s has no API entry (add it to a page under docs/api/)",
      name,
      type="api_coverage",
    )
  logger.info(
    "api_coverage: %d public names, %d missing", len(public_names()), len(missing)
  )


def setup(app):
  app.connect("env-check-consistency", check)
  app.connect("missing-reference", resolve_reference)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
