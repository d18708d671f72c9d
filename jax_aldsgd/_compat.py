"""Which options combine: the one table, and the check everything calls.

Every transform's factory (`gossip`, `adjacent_leader`, `allreduce`) and the
trainer ask `check_options` before building anything, so each refusal has one
reason and one message wherever it is met. `compatibility_table` renders the
table for the docs (``docs/algorithm.md`` section 10 explains the options).

The features are the exchange (``gossip``, ``adjacent_leader``, ``allreduce``,
and the heterogeneous-data methods ``quasi_global_momentum``, ``d2_gossip``,
``tracking_gossip``)
and the options a caller sets: ``compressor`` (CHOCO-SGD), ``delay`` (push-sum
with stale neighbors), ``overlap`` (adapt-while-combine), ``every`` (local
steps), ``skip_nonfinite`` (leave diverging neighbors out) and ``directed`` (a
schedule whose slots are permutations, not matchings). Any pair not listed in
`REFUSED` combines; several workers per device work with every row.
"""

from __future__ import annotations

import itertools

from jax_aldsgd import _checks
from jax_aldsgd._schedules import Schedule

EXCHANGES = (
  "gossip",
  "adjacent_leader",
  "allreduce",
  "quasi_global_momentum",
  "d2_gossip",
  "tracking_gossip",
)
OPTIONS = ("compressor", "delay", "overlap", "every", "skip_nonfinite", "directed")

# (feature, feature) -> (why they do not combine, what to do instead).
REFUSED: dict[frozenset[str], tuple[str, str]] = {
  frozenset({"allreduce", "compressor"}): (
    "the all-reduce does not compress its messages",
    "for compressed communication use gossip(schedule, compressor=...) "
    "(CHOCO-SGD), or drop the compressor",
  ),
  frozenset({"allreduce", "delay"}): (
    "the all-reduce has no neighbors whose messages could be stale",
    "use gossip(schedule, delay=...) to study staleness",
  ),
  frozenset({"allreduce", "skip_nonfinite"}): (
    "the all-reduce averages every worker, so a non-finite one reaches all",
    "use gossip(schedule, skip_nonfinite=True), or drop skip_nonfinite",
  ),
  frozenset({"adjacent_leader", "delay"}): (
    "AL-DSGD's pull is not mass-conserving, so there is no push-sum form to delay",
    "use delay with gossip (D-PSGD, MATCHA), or drop delay",
  ),
  frozenset({"adjacent_leader", "directed"}): (
    "AL-DSGD chooses its leader among neighbors it exchanges with both ways; "
    "on a directed step a worker does not receive from the workers it sends to",
    "use a schedule of matchings (schedules.full, alternating, matcha, "
    "rotating), or gossip on the directed schedule",
  ),
  frozenset({"compressor", "delay"}): (
    "the delayed exchange is push-sum, CHOCO-SGD's keeps public copies",
    "drop one of them",
  ),
  frozenset({"compressor", "skip_nonfinite"}): (
    "a neighbor's public copy cannot be left out of one step without "
    "breaking the copies' agreement",
    "drop skip_nonfinite or the compressor",
  ),
  frozenset({"compressor", "directed"}): (
    "CHOCO-SGD's public copies are kept per edge, both ends updating them "
    "alike; a directed slot has no such pairs",
    "use a schedule of matchings, or gossip without a compressor",
  ),
  frozenset({"delay", "overlap"}): (
    "the delayed (push-sum) exchange sends x + u and mixes every share it receives",
    "use delay=0 for overlap, or drop overlap",
  ),
  frozenset({"delay", "skip_nonfinite"}): (
    "the delayed (push-sum) exchange mixes every share it receives; leaving "
    "one out would lose its mass",
    "use delay=0 for skip_nonfinite, or drop skip_nonfinite",
  ),
  # The heterogeneous-data methods (docs/algorithm.md section 11) keep state
  # across consecutive exchanges and, for quasi_global_momentum and
  # tracking_gossip, take the local step themselves.
  frozenset({"quasi_global_momentum", "compressor"}): (
    "QG-DSGDm's exchange sends the parameters; its compressed form is not implemented",
    "use gossip(schedule, compressor=...) after optax.sgd(..., momentum=...)",
  ),
  frozenset({"quasi_global_momentum", "delay"}): (
    "the quasi-global momentum is the displacement x - W x_half of this step; "
    "with stale neighbors it has no push-sum form here",
    "use gossip(schedule, delay=...) after a local optimizer",
  ),
  frozenset({"quasi_global_momentum", "overlap"}): (
    "QG-DSGDm takes the local step itself and mixes its result x_half; "
    "exchanging x alone is another method",
    "drop overlap",
  ),
  frozenset({"quasi_global_momentum", "every"}): (
    "QG-DSGDm takes the local step itself, so skipping the exchange would "
    "skip the step, and its momentum is built from each exchange's displacement",
    "drop every, or use every with gossip after optax.sgd(..., momentum=...)",
  ),
  frozenset({"quasi_global_momentum", "skip_nonfinite"}): (
    "QG-DSGDm's exchange does not leave neighbors out",
    "drop skip_nonfinite, or use gossip(schedule, skip_nonfinite=True)",
  ),
  frozenset({"d2_gossip", "compressor"}): (
    "D² mixes the exact x_half; its compressed forms (DCD-, ECD-PSGD) are "
    "other methods, not implemented",
    "drop the compressor, or use gossip(schedule, compressor=...)",
  ),
  frozenset({"d2_gossip", "delay"}): (
    "D²'s correction x - x_prev - u_prev assumes every neighbor's x_half of "
    "this step; with stale ones it has no push-sum form",
    "drop delay",
  ),
  frozenset({"d2_gossip", "overlap"}): (
    "D² mixes x_half = x + u + (x - x_prev - u_prev); exchanging x alone is not D²",
    "drop overlap",
  ),
  frozenset({"d2_gossip", "every"}): (
    "D²'s correction uses the previous step's x and update; local steps in "
    "between would make it span several steps",
    "drop every",
  ),
  frozenset({"d2_gossip", "skip_nonfinite"}): (
    "D²'s correction cancels the heterogeneity only with the same W at "
    "consecutive steps; leaving a neighbor out changes W for one of them",
    "drop skip_nonfinite",
  ),
  frozenset({"tracking_gossip", "compressor"}): (
    "gradient tracking exchanges x and the tracker y exactly; its compressed "
    "form is not implemented",
    "drop the compressor",
  ),
  frozenset({"tracking_gossip", "delay"}): (
    "the tracker y keeps the mean gradient only if every share of y is mixed "
    "in the step it is sent",
    "drop delay",
  ),
  frozenset({"tracking_gossip", "overlap"}): (
    "gradient tracking already exchanges x (and y) while the local step uses "
    "y: x+ = W x - lr y",
    "drop overlap (it is the method's own form)",
  ),
  frozenset({"tracking_gossip", "every"}): (
    "gradient tracking takes the local step itself, so skipping the exchange "
    "would skip the step, and y must be mixed every step to track the mean gradient",
    "drop every",
  ),
  frozenset({"tracking_gossip", "skip_nonfinite"}): (
    "leaving a neighbor's y out loses its share of the tracked gradient sum",
    "drop skip_nonfinite",
  ),
}


# Pairs where the question does not arise (the all-reduce takes no schedule).
NOT_APPLICABLE = {frozenset({"allreduce", "directed"})}


def _active(options: dict) -> dict[str, str]:
  """The features an option dict turns on, each with how it was set."""
  on = {}
  if options.get("compressor") is not None:
    on["compressor"] = f"compressor={options['compressor']!r}"
  for name, default in (("delay", 0), ("every", 1)):
    value = options.get(name, default)
    if value is None or _checks.is_traced(value):
      continue
    if value != default:
      on[name] = f"{name}={value!r}"
  for name in ("overlap", "skip_nonfinite"):
    value = options.get(name, False)
    if not _checks.is_traced(value) and value:
      on[name] = f"{name}={value!r}"
  schedule = options.get("schedule")
  if isinstance(schedule, Schedule) and schedule.directed:
    on["directed"] = f"a directed schedule ({type(schedule).__name__})"
  return on


def check_options(
  exchange: str,
  *,
  compressor=None,
  delay=0,
  overlap=False,
  every=1,
  skip_nonfinite=False,
  schedule: Schedule | None = None,
) -> None:
  """Raises ``ValueError`` if ``exchange`` does not combine with these options.

  The one place that decides which options combine (the table `REFUSED`;
  `compatibility_table` shows it). Called by every transform factory, and by
  callers that want to know before building (the trainer checks its config).

  Args:
    exchange: one of `EXCHANGES` (``"gossip"``, ``"adjacent_leader"``,
      ``"allreduce"``, ``"quasi_global_momentum"``, ``"d2_gossip"``,
      ``"tracking_gossip"``).
    compressor, delay, overlap, every, skip_nonfinite: as given to the
      transform (defaults: off).
    schedule: the schedule, if any (a directed one is a feature of its own).

  Example:
    >>> import jax_aldsgd as ald
    >>> ald.check_options("gossip", delay=2, every=4)  # combine: no error
    >>> ald.check_options("adjacent_leader", delay=2)
    Traceback (most recent call last):
    ...
    ValueError: adjacent_leader cannot be combined with delay=2: AL-DSGD's pull is not mass-conserving, so there is no push-sum form to delay; use delay with gossip (D-PSGD, MATCHA), or drop delay.
  """
  if exchange not in EXCHANGES:
    raise ValueError(
      f"exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}."
    )
  on = {exchange: exchange}
  on.update(
    _active(
      dict(
        compressor=compressor,
        delay=delay,
        overlap=overlap,
        every=every,
        skip_nonfinite=skip_nonfinite,
        schedule=schedule,
      )
    )
  )
  order = EXCHANGES + OPTIONS
  for a, b in itertools.combinations(sorted(on, key=order.index), 2):
    refused = REFUSED.get(frozenset({a, b}))
    if refused is not None:
      why, fix = refused
      raise ValueError(f"{on[a]} cannot be combined with {on[b]}: {why}; {fix}.")


def compatibility_table() -> str:
  """The table as Markdown: a row per exchange and option, "yes" or "no"."""
  rows = EXCHANGES + OPTIONS
  lines = [
    "| | " + " | ".join(OPTIONS) + " |",
    "|---|" + "---|" * len(OPTIONS),
  ]
  for row in rows:
    cells = []
    for column in OPTIONS:
      if row == column or frozenset({row, column}) in NOT_APPLICABLE:
        cells.append("–")
      else:
        cells.append("no" if frozenset({row, column}) in REFUSED else "yes")
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
