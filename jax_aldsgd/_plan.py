"""Host-side planning of the exchange, and the vocabulary of the whole package.

Glossary (every module uses these words in this sense):

* **worker**: one copy of the model, one row of the ``"workers"`` mesh axis
  (``worker_index``); n workers in all.
* **matching**: a set of disjoint worker pairs; a graph (`Topology`) is a list
  of matchings (an edge colouring), so one matching is one ``ppermute`` in which
  every matched worker sends to and receives from its partner.
* **slot**: one exchange a schedule may run in a step: a matching of one of its
  graphs (slot s of a rotation over G graphs is matching m of graph g), or, for
  a *directed* schedule, a permutation. ``schedule.slot_partners[s, i]`` is the
  worker that worker i *receives from* in slot s (its partner, for a
  matching), -1 if none; the slot's ``ppermute`` pairs are (source, receiver).
* **active**: a slot exchanges at a step if ``schedule.slot_flags(step)`` says
  so; an inactive slot sends nothing. The **active degree** of a worker is the
  number of active slots in which it receives.
* **neighbor weight** ``alpha``: the weight of the step's graph; the step's
  mixing matrix is ``W = I - alpha sum_{active s} (I - P_s)`` over the
  receiving rows (`Schedule.mixing_matrix`).
* **pattern** (activation pattern): one of the distinct ``(num_slots,)`` masks a
  schedule's flags can take. The exchange runs one ``lax.switch`` per step
  whose branches are the patterns, each branch issuing exactly its slots'
  ``ppermute`` s.
* **group**: consecutive slots sharing one such switch (`SlotGroup`); a
  schedule with many patterns is split into several groups of at most
  `MAX_BRANCHES` branches.
* **message** / **buffer**: what one worker sends along one active slot, one
  flat array (``_packing.pack``).
* **fold**: exchanging a buffer slot by slot and folding each received buffer
  into a *carry* (a running sum), one received buffer alive at a time
  (``_fold``).
* **block**: the workers sharing one device (``workers_per_device > 1``); a
  **round** is one ``ppermute`` of the cross-device traffic of one slot, in
  which every device sends and receives at most one message (`block_plan`).

Everything here is static: NumPy on the host, cached per schedule.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_aldsgd._schedules import Schedule


def pairs(partners: np.ndarray) -> tuple[tuple[int, int], ...]:
  """A slot's ``ppermute`` pairs (source, receiver) from its receive-from row.

  ``partners[i]`` is the worker i receives from (-1: none); for a matching
  the pairs are the same both ways, for a permutation they are its arrows.
  """
  return tuple((int(j), int(i)) for i, j in enumerate(partners) if j >= 0)


class Neighborhood(NamedTuple):
  """What a worker knows about this step's exchanges without communicating.

  Attributes:
    present: ``(S,)`` bool, whether this worker has a partner in each active slot.
    partner: ``(S,)`` int, this worker's partner per slot (0 where it has none).
    weight: scalar neighbor weight ``alpha`` of this step's graph (all active
      slots belong to one graph; 0 when none is active).
    degrees: ``(n,)`` active degree of every worker, computed locally.
  """

  present: jax.Array
  partner: jax.Array
  weight: jax.Array
  degrees: jax.Array


def neighborhood(
  schedule: Schedule, step: jax.Array, me: jax.Array, dtype
) -> Neighborhood:
  flags = schedule.slot_flags(step, jnp)  # (S,)
  partners = jnp.asarray(schedule.slot_partners)  # (S, n)
  my_partner = partners[:, me]  # (S,)
  return Neighborhood(
    present=flags & (my_partner >= 0),
    partner=jnp.maximum(my_partner, 0),
    # A schedule runs one graph per step (rotating: one child at a time).
    weight=jnp.max(jnp.where(flags, jnp.asarray(schedule.slot_weight, dtype), 0)),
    degrees=jnp.sum(flags[:, None] & (partners >= 0), axis=0),  # (n,)
  )


# Most branches one lax.switch may have; schedules with more distinct
# activation patterns are split into several switches over fewer slots.
MAX_BRANCHES = 16
# Most patterns enumerated on the host before falling back to one switch per slot.
_MAX_PATTERNS = 4096


class SlotGroup(NamedTuple):
  """Consecutive slots that one ``lax.switch`` (or none) exchanges.

  Attributes:
    slots: the slot indices of the group, in exchange order.
    patterns: per branch, the group's slots active in it (in order); one
      branch per distinct activation pattern the schedule can produce.
    codes: ``(len(patterns),)`` int32 code of each pattern, bit k set if
      ``slots[k]`` is active: the branch index is the position of the step's code.
  """

  slots: tuple[int, ...]
  patterns: tuple[tuple[int, ...], ...]
  codes: np.ndarray


def check_slots(schedule: Schedule) -> None:
  """Raises unless every slot is one ``ppermute``: each worker sends to at most one.

  A matching always is; a hand-written `Schedule.slot_partners` (a directed
  schedule) might not be.
  """
  table = np.asarray(schedule.slot_partners)
  n = table.shape[1]
  for s, row in enumerate(table):
    sources = row[row >= 0]
    if np.any(row >= n) or np.any(row < -1):
      raise ValueError(
        f"slot {s} of {type(schedule).__name__} names workers outside "
        f"[0, {n}) (slot_partners row {row.tolist()}); use -1 for no partner."
      )
    if np.any(sources == np.flatnonzero(row >= 0)):
      raise ValueError(
        f"slot {s} of {type(schedule).__name__} has a worker receiving from "
        f"itself (slot_partners row {row.tolist()}); use -1 for no partner."
      )
    if len(set(sources.tolist())) != len(sources):
      raise ValueError(
        f"slot {s} of {type(schedule).__name__} has a worker that sends to more "
        f"than one (slot_partners row {row.tolist()}): one ppermute per slot "
        "needs each worker to send to and receive from at most one other; "
        "split the slot into several."
      )


@functools.lru_cache(maxsize=64)
def exchange_plan(schedule: Schedule) -> tuple[SlotGroup, ...]:
  """Splits the slots into groups of at most `MAX_BRANCHES` distinct patterns.

  The schedule's distinct activation patterns are enumerated on the host
  (``schedule._patterns``): `full` has one, `alternating` two, a rotation the
  sum of its children's, MATCHA on R matchings ``2^F`` (F = matchings with
  ``0 < p < 1``). Consecutive slots join a group while the patterns projected
  on the group stay within `MAX_BRANCHES` (and 30 slots, the width of a code).
  A schedule that cannot enumerate its patterns gets one group per slot,
  patterns "off" and "on".
  """
  check_slots(schedule)
  patterns = schedule.activation_patterns(_MAX_PATTERNS)
  if patterns is None:
    groups = [[s] for s in range(schedule.num_slots)]
  else:
    table = np.array(sorted(patterns), dtype=bool).reshape(-1, schedule.num_slots)
    groups, current = [], []
    for s in range(schedule.num_slots):
      candidate = current + [s]
      distinct = len({tuple(row) for row in table[:, candidate]})
      if current and (distinct > MAX_BRANCHES or len(candidate) > 30):
        groups.append(current)
        candidate = [s]
      current = candidate
    if current:
      groups.append(current)
  plan = []
  for slots in groups:
    if patterns is None:
      rows = {(False,), (True,)}
    else:
      rows = {tuple(row) for row in table[:, slots]}
    rows = sorted(rows)
    codes = np.array(
      [sum(int(on) << k for k, on in enumerate(row)) for row in rows], np.int32
    )
    plan.append(
      SlotGroup(
        tuple(slots),
        tuple(tuple(s for s, on in zip(slots, row) if on) for row in rows),
        codes,
      )
    )
  return tuple(plan)


def one_slot_per_step(schedule: Schedule) -> bool:
  """Whether no step of ``schedule`` has more than one active slot.

  Then `fold` runs its single combine after the switch, fused with whatever
  consumes the result (`alternating` and rotations of it); a schedule that
  cannot enumerate its patterns counts as several.
  """
  plan = exchange_plan(schedule)
  return len(plan) <= 1 and all(
    len(active) <= 1 for group in plan for active in group.patterns
  )


class Round(NamedTuple):
  """One ppermute of a slot's cross-device traffic.

  Attributes:
    pairs: (source device, destination device) pairs; each device sends at most
      one message and receives at most one.
    send_rows: ``(D, m)`` local rows each device packs into its message.
    receive_rows: ``(D, k)`` row of the received message holding each local
      worker's partner, or -1.
  """

  pairs: tuple[tuple[int, int], ...]
  send_rows: np.ndarray
  receive_rows: np.ndarray


@functools.lru_cache(maxsize=64)
def block_plan(schedule: Schedule, num_devices: int, per_device: int):
  """Per slot: in-device partner rows ``(D, k)`` (or -1) and cross-device rounds.

  Cross-device traffic of a slot is grouped into one message per (source device,
  destination device) pair; messages are coloured greedily into rounds in which
  every device sends and receives at most one message, one ``ppermute`` each.
  """
  k = per_device
  plans = []
  for partners in schedule.slot_partners:
    local = np.full((num_devices, k), -1, np.int32)
    messages: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for worker, partner in enumerate(partners):
      if partner < 0:
        continue
      device, row = divmod(worker, k)
      source, source_row = divmod(int(partner), k)
      if source == device:
        local[device, row] = source_row
      else:
        messages.setdefault((source, device), []).append((source_row, row))
    rounds: list[dict[tuple[int, int], list]] = []
    for (source, destination), rows in sorted(messages.items()):
      for members in rounds:
        if all(source != a and destination != b for a, b in members):
          members[(source, destination)] = rows
          break
      else:
        rounds.append({(source, destination): rows})
    plan_rounds = []
    for members in rounds:
      width = max(len(rows) for rows in members.values())
      send_rows = np.zeros((num_devices, width), np.int32)
      receive_rows = np.full((num_devices, k), -1, np.int32)
      for (source, destination), rows in members.items():
        for position, (source_row, row) in enumerate(rows):
          send_rows[source, position] = source_row
          receive_rows[destination, row] = position
      plan_rounds.append(Round(tuple(members), send_rows, receive_rows))
    plans.append((local, tuple(plan_rounds)))
  return tuple(plans)
