"""Constructors of communication graphs (`jax_aldsgd.Topology`)."""

from jax_aldsgd._topology import complete as complete
from jax_aldsgd._topology import erdos_renyi as erdos_renyi
from jax_aldsgd._topology import exponential as exponential
from jax_aldsgd._topology import from_edges as from_edges
from jax_aldsgd._topology import paper_graph as paper_graph
from jax_aldsgd._topology import random_geometric as random_geometric
from jax_aldsgd._topology import ring as ring
from jax_aldsgd._topology import torus as torus

__all__ = [
  "complete",
  "erdos_renyi",
  "exponential",
  "from_edges",
  "paper_graph",
  "random_geometric",
  "ring",
  "torus",
]
