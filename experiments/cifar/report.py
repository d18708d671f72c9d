"""Per-epoch metrics (``metrics.jsonl``) and the run's plots."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

# Fields that measure the machine rather than the run; everything else in a
# record is a pure function of the config and seed (on CPU).
TIMING_FIELDS = ("time_train_s", "time_total_s", "images_per_s")


class MetricsLog:
  """An append-only JSON-lines file of one record per epoch."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)

  def read(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    records = []
    for line in self.path.read_text().splitlines():
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line cut short by a crash, and everything after it
    return records

  def keep_epochs_before(self, epoch: int) -> list[dict[str, Any]]:
    """Drops records of ``epoch`` and later (work a resumed run will redo)."""
    records = [r for r in self.read() if r["epoch"] < epoch]
    self._write(records)
    return records

  def append(self, record: dict[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def _write(self, records):
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, self.path)


def plot_run(
  records: list[dict[str, Any]], directory: str | pathlib.Path, title: str = ""
) -> None:
  """Test accuracy per worker and of the averaged model, and consensus distance."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not records:
    return
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  epochs = [r["epoch"] + 1 for r in records]

  accuracy = np.array([r["test_accuracy"] for r in records]) * 100
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for worker in range(accuracy.shape[1]):
    ax.plot(epochs, accuracy[:, worker], lw=1, alpha=0.7, label=f"worker {worker}")
  ax.plot(epochs, accuracy.mean(1), "k-", lw=2, label="mean of workers")
  ax.plot(
    epochs,
    [r["test_accuracy_averaged_model"] * 100 for r in records],
    "k--",
    lw=2,
    label="averaged model",
  )
  ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(directory / "test_accuracy.png", dpi=110)
  plt.close(fig)

  distance = np.array([r["consensus_distance"] for r in records])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for worker in range(distance.shape[1]):
    ax.plot(epochs, distance[:, worker], lw=1, alpha=0.7, label=f"worker {worker}")
  ax.set(
    xlabel="epoch", ylabel="||x_i - mean(x)||", title=title or "consensus", yscale="log"
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(directory / "consensus_distance.png", dpi=110)
  plt.close(fig)
