"""Sphinx configuration of the jax_aldsgd documentation (built by docs/build.sh).

Sphinx with MyST markdown and myst-nb, as JAX, optax and flax build theirs: the
pages are markdown, the API reference comes from the docstrings (autodoc +
napoleon, Google style) and the tutorials are MyST notebooks executed at every
build on emulated CPU devices.
"""

from __future__ import annotations

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # jax_aldsgd and experiments, from a clone
sys.path.insert(0, str(DOCS / "_ext"))
# The notebooks' kernels start in their own directory; they import the
# repository's packages from here.
os.environ["PYTHONPATH"] = os.pathsep.join(
  [str(DOCS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
)

# The notebooks' host-side NumPy (eigenvalues of 1024-worker graphs) runs in
# one BLAS thread: on a 2-core machine, OpenBLAS's thread pool competing with
# XLA's emulated devices made them several times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax_aldsgd  # noqa: E402

project = "jax_aldsgd"
author = "the jax_aldsgd authors"
copyright = "the jax_aldsgd authors; Apache-2.0"
release = version = jax_aldsgd.__version__

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx_copybutton",
  "api_coverage",
  "concept_figures",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "build.sh", "_ext"]
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}

# -- MyST: markdown, links and anchors ---------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist", "attrs_inline"]
# `[text](page.md#a-heading)` resolves to the heading's anchor; a link to a
# page or heading that does not exist is a warning, so an error under -W.
myst_heading_anchors = 4
myst_all_links_external = False

# -- myst-nb: the tutorials run at every build --------------------------------
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 180  # seconds per cell
nb_execution_show_tb = True
nb_merge_streams = True

# -- autodoc: the API reference from the docstrings ---------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
# Single backticks in the docstrings name the library's objects: link them.
default_role = "py:obj"
# -n (nitpicky) reports every reference that resolves nowhere. The build is
# offline (no intersphinx), so names from JAX, NumPy, optax and the standard
# library cannot resolve; they, and nothing of ours, are exempt.
nitpicky = True
nitpick_ignore_regex = [
  (r"py:.*", r"(jax|jnp|np|numpy|optax|chex|typing|collections|abc|types)(\..*)?"),
  (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterable|Iterator|NamedTuple|Self)"),
  (r"py:.*", r"(int|float|bool|str|bytes|tuple|list|dict|object|None|type)"),
]

# The results pages include experiments/results/*.md as written; some of those
# skip a heading level (# then ###), which MyST reports as myst.header.
suppress_warnings = ["myst.header"]

# -- HTML ---------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "jax_aldsgd"
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}
