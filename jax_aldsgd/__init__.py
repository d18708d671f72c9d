"""jax_aldsgd: decentralized (gossip) data-parallel training in JAX.

AL-DSGD (He, Wang & Choromanska, arXiv 2405.11389), D-PSGD and MATCHA as optax
transforms that run inside ``jax.shard_map`` over a ``"workers"`` mesh axis.
"""

from jax_aldsgd import compressors as compressors
from jax_aldsgd import exchange as exchange
from jax_aldsgd import schedules as schedules
from jax_aldsgd import topologies as topologies
from jax_aldsgd._aldsgd import AdjacentLeaderState as AdjacentLeaderState
from jax_aldsgd._aldsgd import (
  adjacent_leader_message_bytes as adjacent_leader_message_bytes,
)
from jax_aldsgd._aldsgd import (
  adjacent_leader_message_parts as adjacent_leader_message_parts,
)
from jax_aldsgd._alias import aldsgd as aldsgd
from jax_aldsgd._alias import d2 as d2
from jax_aldsgd._alias import dsgd as dsgd
from jax_aldsgd._alias import gradient_tracking as gradient_tracking
from jax_aldsgd._alias import local_sgd as local_sgd
from jax_aldsgd._alias import qg_dsgdm as qg_dsgdm
from jax_aldsgd._choco import ChocoSlotState as ChocoSlotState
from jax_aldsgd._choco import ChocoState as ChocoState
from jax_aldsgd._choco import choco_message_bytes as choco_message_bytes
from jax_aldsgd._compat import check_options as check_options
from jax_aldsgd._compat import compatibility_table as compatibility_table
from jax_aldsgd._d2 import D2State as D2State
from jax_aldsgd._d2 import d2_gossip as d2_gossip
from jax_aldsgd._gossip import GossipState as GossipState
from jax_aldsgd._gossip import allreduce_bytes as allreduce_bytes
from jax_aldsgd._gossip import gossip_message_bytes as gossip_message_bytes
from jax_aldsgd._mesh import emulate_cpu_devices as emulate_cpu_devices
from jax_aldsgd._mesh import gather_workers as gather_workers
from jax_aldsgd._mesh import initialize_multihost as initialize_multihost
from jax_aldsgd._mesh import replicate_workers as replicate_workers
from jax_aldsgd._mesh import shard_workers as shard_workers
from jax_aldsgd._mesh import stack_workers as stack_workers
from jax_aldsgd._mesh import unstack_workers as unstack_workers
from jax_aldsgd._mesh import worker_map as worker_map
from jax_aldsgd._mesh import worker_mesh as worker_mesh
from jax_aldsgd._network import NetworkModel as NetworkModel
from jax_aldsgd._packing import all_finite as all_finite
from jax_aldsgd._quasi_global import (
  QuasiGlobalMomentumState as QuasiGlobalMomentumState,
)
from jax_aldsgd._quasi_global import quasi_global_momentum as quasi_global_momentum
from jax_aldsgd._schedules import Schedule as Schedule
from jax_aldsgd._topology import Topology as Topology
from jax_aldsgd._tracking import TrackingState as TrackingState
from jax_aldsgd._tracking import tracking_gossip as tracking_gossip
from jax_aldsgd._tracking import tracking_message_bytes as tracking_message_bytes
from jax_aldsgd._traffic import Traffic as Traffic
from jax_aldsgd._traffic import traffic as traffic
from jax_aldsgd._transforms import adjacent_leader as adjacent_leader
from jax_aldsgd._transforms import allreduce as allreduce
from jax_aldsgd._transforms import gossip as gossip
from jax_aldsgd._tuning import ConsensusTuning as ConsensusTuning
from jax_aldsgd._tuning import tune_consensus_lr as tune_consensus_lr
from jax_aldsgd._wrappers import adapt_while_combine as adapt_while_combine
from jax_aldsgd._wrappers import every_steps as every_steps

__version__ = "0.1.0"

__all__ = [
  "AdjacentLeaderState",
  "ChocoSlotState",
  "ChocoState",
  "ConsensusTuning",
  "D2State",
  "GossipState",
  "NetworkModel",
  "QuasiGlobalMomentumState",
  "Schedule",
  "Topology",
  "TrackingState",
  "Traffic",
  "adapt_while_combine",
  "adjacent_leader",
  "adjacent_leader_message_bytes",
  "adjacent_leader_message_parts",
  "aldsgd",
  "all_finite",
  "allreduce",
  "allreduce_bytes",
  "check_options",
  "choco_message_bytes",
  "compatibility_table",
  "compressors",
  "d2",
  "d2_gossip",
  "dsgd",
  "emulate_cpu_devices",
  "every_steps",
  "exchange",
  "gather_workers",
  "gossip",
  "gossip_message_bytes",
  "gradient_tracking",
  "initialize_multihost",
  "local_sgd",
  "qg_dsgdm",
  "quasi_global_momentum",
  "replicate_workers",
  "schedules",
  "shard_workers",
  "stack_workers",
  "topologies",
  "tracking_gossip",
  "tracking_message_bytes",
  "traffic",
  "tune_consensus_lr",
  "unstack_workers",
  "worker_map",
  "worker_mesh",
]
