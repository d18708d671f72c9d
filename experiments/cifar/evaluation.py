"""Evaluation of all workers: test metrics of each and of their average, consensus."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_aldsgd as ald
from experiments.cifar import input_pipeline, models


def place(array, mesh, spec):
  """A host array as a global array on ``mesh`` (each process its own shards)."""
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


class Evaluator:
  """Test loss and accuracy of every worker's model and of the averaged model."""

  def __init__(self, images, labels, info, batch_size: int, graphdef, mesh):
    """Normalizes the test set and pads it to whole batches divisible by the devices."""
    self._mesh = mesh
    self._devices = mesh.shape["workers"]
    self._batch_size = -(-batch_size // self._devices) * self._devices
    self._count = len(images)
    total = -(-self._count // self._batch_size) * self._batch_size
    pad = lambda a: np.concatenate(
      [a, np.zeros((total - len(a),) + a.shape[1:], a.dtype)]
    )
    self._images = pad(input_pipeline.normalize(images, info.mean, info.std))
    self._labels = pad(labels.astype(np.int32))
    self._mask = pad(np.ones(self._count, np.float32))

    def evaluate(params, batch_stats, images, labels, mask):
      logits, _ = models.apply_model(graphdef, params, batch_stats, images, train=False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      correct = jnp.argmax(logits, -1) == labels
      return jnp.sum(losses * mask), jnp.sum(correct * mask)

    workers, everyone = jax.P("workers"), jax.P()

    # Every worker evaluates its own model on the same (replicated) test batch;
    # a device holds a (workers_per_device, ...) block of workers.
    def own(params, batch_stats, images, labels, mask):
      return jax.vmap(evaluate, in_axes=(0, 0, None, None, None))(
        params, batch_stats, images, labels, mask
      )

    self._own = jax.jit(
      jax.shard_map(
        own,
        mesh=mesh,
        in_specs=(workers, workers, everyone, everyone, everyone),
        out_specs=(workers, workers),
      )
    )

    # The averaged model, on a test batch split across the devices.
    def shared(params, batch_stats, images, labels, mask):
      loss, correct = evaluate(params, batch_stats, images[0], labels[0], mask[0])
      return jax.lax.psum(loss, "workers"), jax.lax.psum(correct, "workers")

    self._shared = jax.jit(
      jax.shard_map(
        shared,
        mesh=mesh,
        in_specs=(everyone, everyone, workers, workers, workers),
        out_specs=(everyone, everyone),
      )
    )

  def __call__(self, state) -> dict[str, Any]:
    """The test metrics of ``state`` (the trainer's ``TrainState``)."""
    own_loss = own_correct = avg_loss = avg_correct = 0.0
    mean_params, mean_stats = worker_mean((state.params, state.batch_stats))
    for start in range(0, len(self._images), self._batch_size):
      arrays = [
        a[start : start + self._batch_size]
        for a in (self._images, self._labels, self._mask)
      ]
      loss, correct = self._own(
        state.params,
        state.batch_stats,
        *[place(a, self._mesh, jax.P()) for a in arrays],
      )
      own_loss, own_correct = own_loss + loss, own_correct + correct
      split = [
        ald.shard_workers(a.reshape((self._devices, -1) + a.shape[1:]), self._mesh)
        for a in arrays
      ]
      loss, correct = self._shared(mean_params, mean_stats, *split)
      avg_loss, avg_correct = avg_loss + loss, avg_correct + correct
    own_loss, own_correct, avg_loss, avg_correct = ald.gather_workers(
      (own_loss, own_correct, avg_loss, avg_correct)
    )
    return dict(
      eval_examples=self._count,
      test_loss=(own_loss / self._count).tolist(),
      test_accuracy=(own_correct / self._count).tolist(),
      test_loss_averaged_model=float(avg_loss / self._count),
      test_accuracy_averaged_model=float(avg_correct / self._count),
    )


@jax.jit
def worker_mean(tree):
  """The mean over the leading worker axis of every leaf."""
  return jax.tree.map(lambda a: a.mean(0), tree)


@jax.jit
def consensus_distance(params) -> jax.Array:
  """``(n,)`` distance of every worker's parameters to the workers' mean."""
  mean = worker_mean(params)
  squares = sum(
    jnp.sum((a - m[None]) ** 2, axis=tuple(range(1, a.ndim)))
    for a, m in zip(jax.tree.leaves(params), jax.tree.leaves(mean))
  )
  return jnp.sqrt(squares)


# ``(n,)``: whether each worker's parameters are all finite.
workers_finite = jax.jit(jax.vmap(ald.all_finite))
