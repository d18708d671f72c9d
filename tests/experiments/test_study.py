"""experiments.study: its grids are valid configs, its runner goes on after a
failed run, and its report's means and 95% intervals match a NumPy reference."""

import dataclasses
import json
import math
import pathlib
import shutil

import numpy as np
import pytest

from experiments import study
from experiments.cifar.configs import fashion_mnist

# Student's t, 0.975 quantile, 2 degrees of freedom (tables; scipy.stats.t.ppf).
T_975_DF2 = 4.302652729911275


@pytest.mark.parametrize("grid", sorted(study.GRIDS))
def test_every_override_is_a_config_field_of_the_right_type(grid):
  config = fashion_mnist.get_config()
  for cell in study.GRIDS[grid].cells:
    for key, value in study.GRIDS[grid].settings + cell.overrides:
      assert key in config, (grid, cell.name, key)
      default = config[key]
      assert isinstance(value, type(default)) or (
        isinstance(default, (int, float)) and isinstance(value, (int, float))
      ), (grid, cell.name, key, value, default)


def test_every_grid_names_its_cells_once():
  for name, grid in study.GRIDS.items():
    names = [cell.name for cell in grid.cells]
    assert len(names) == len(set(names)), name


def test_pairs_and_shared_cells_name_cells_that_exist():
  for name, grid in study.GRIDS.items():
    cells = {cell.name for cell in grid.cells}
    for pair in grid.pairs:
      assert set(pair) <= cells, (name, pair)
    for cell in grid.cells:
      if cell.shared_with:
        owner = {c.name: c for c in study.GRIDS[cell.shared_with].cells}
        assert owner[cell.name].overrides == cell.overrides, (name, cell.name)
        assert owner[cell.name].shared_with is None


def test_shared_cells_train_once_in_the_grid_that_owns_them(tmp_path):
  low = {c.name: c for c in study.GRIDS["low_degree"].cells}
  paper = {c.name: c for c in study.GRIDS["paper"].cells}
  shared = low["aldsgd_dpsgd_reference"]
  assert shared.shared_with == "paper"
  assert study.workdir(tmp_path, "low_degree", shared, 2) == study.workdir(
    tmp_path, "paper", paper["aldsgd_dpsgd_reference"], 2
  )
  assert shared.overrides == paper["aldsgd_dpsgd_reference"].overrides
  own = low["aldsgd_dpsgd_reference_g0"]
  assert study.workdir(tmp_path, "low_degree", own, 2) == (
    tmp_path / "low_degree" / own.name / "seed2"
  )
  assert "--config.graph_ids=(0,)" in own.flags()


def test_run_goes_on_after_a_failed_run_and_reports_it(tmp_path, monkeypatch, capsys):
  calls = []

  class Done:
    def __init__(self, returncode):
      self.returncode = returncode

  def fake_run(cmd):
    calls.append(cmd)
    return Done(1 if len(calls) == 2 else 0)

  monkeypatch.setattr(study.subprocess, "run", fake_run)
  rc = study.main(["run", "low_degree", "--seeds", "5", "--root", str(tmp_path)])
  cells = study.GRIDS["low_degree"].cells
  assert rc == 1
  assert len(calls) == len(cells)
  second = study.workdir(tmp_path, "low_degree", cells[1], 5)
  assert f"--workdir={second}" in calls[1]
  assert "--config.seed=5" in calls[1]
  assert str(second) in capsys.readouterr().out.split("failed")[-1]


def test_run_archives_finished_runs_and_skips_archived_ones(tmp_path, monkeypatch):
  """--archive copies a finished run's metrics and config, not its checkpoints,
  and a later invocation (a machine without the workdirs) skips what it holds."""
  cells = study.GRIDS["low_degree"].cells
  root, archive = tmp_path / "root", tmp_path / "archive"
  calls = []

  class Done:
    returncode = 0

  def fake_run(cmd):
    calls.append(cmd)
    directory = pathlib.Path(cmd[cmd.index("-m") + 3].split("=", 1)[1])
    shutil.rmtree(directory, ignore_errors=True)
    # The first cell finishes; the second stops after one of its two epochs.
    epochs = 2 if len(calls) == 1 else 1
    _fake_run(directory, [[0.5]] * epochs, [0.5] * epochs, 2)
    (directory / "checkpoints").mkdir()
    return Done()

  monkeypatch.setattr(study.subprocess, "run", fake_run)
  args = ["run", "low_degree", "--seeds", "1", "--root", str(root)]
  assert study.main(args + ["--archive", str(archive)]) == 0
  first = study.workdir(archive, "low_degree", cells[0], 1)
  assert sorted(p.name for p in first.iterdir()) == ["config.json", "metrics.jsonl"]
  assert (first / "metrics.jsonl").read_text() == (
    study.workdir(root, "low_degree", cells[0], 1) / "metrics.jsonl"
  ).read_text()
  # The unfinished run (archived too: its trainer exited 0) runs again.
  calls.clear()
  assert study.main(args + ["--archive", str(archive)]) == 0
  assert len(calls) == len(cells) - 1
  assert all(
    f"--workdir={study.workdir(root, 'low_degree', cells[0], 1)}" not in c
    for c in calls
  )


def _fake_run(directory, accuracies, averaged, num_epochs, steps_per_epoch=100):
  """A workdir of an all-reduce run: one record per row of ``accuracies``."""
  config = fashion_mnist.get_config("allreduce").to_dict()
  config["num_epochs"] = num_epochs
  config["graph_ids"] = list(config["graph_ids"])
  config["lr_decay_epochs"] = list(config["lr_decay_epochs"])
  directory.mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps(config))
  lines = []
  for epoch, (acc, avg) in enumerate(zip(accuracies, averaged)):
    lines.append(
      json.dumps(
        dict(
          epoch=epoch,
          step=(epoch + 1) * steps_per_epoch,
          test_accuracy=list(acc),
          test_accuracy_averaged_model=avg,
          consensus_distance=[0.1 * (epoch + 1)] * len(acc),
          bytes_sent_mean=1e9 * (epoch + 1),
          message_bytes=4000,
          time_train_s=1.0 * (epoch + 1),
        )
      )
    )
  (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_report_means_and_intervals_over_finished_seeds(tmp_path):
  rng = np.random.default_rng(0)
  cell = "allreduce"
  final = {}
  for seed in (1, 2, 3):
    acc = rng.uniform(0.86, 0.92, size=(2, 8))
    acc[0] = 0.5  # epoch 1 below the target, so the target is reached at epoch 2
    _fake_run(
      tmp_path / "paper" / cell / f"seed{seed}",
      acc,
      [0.5, 0.8 + seed / 100],
      num_epochs=2,
    )
    final[seed] = acc[-1]
  # A run still going (one epoch of two) is left out.
  _fake_run(tmp_path / "paper" / cell / "seed4", [[0.1] * 8], [0.1], num_epochs=2)
  out = tmp_path / "out" / "study"
  assert (
    study.main(
      [
        "report",
        "paper",
        "--root",
        str(tmp_path),
        "--out",
        str(out),
        "--compute-ms",
        "10",
      ]
    )
    == 0
  )
  raw = json.loads(out.with_suffix(".json").read_text())["paper"][cell]
  assert raw["seeds"] == 3

  def interval(values):
    values = np.asarray(values, float)
    return values.mean(), T_975_DF2 * values.std(ddof=1) / math.sqrt(len(values))

  means = [final[s].mean() for s in (1, 2, 3)]
  np.testing.assert_allclose(raw["final_mean"], interval(means), rtol=1e-9)
  worst = [final[s].min() for s in (1, 2, 3)]
  np.testing.assert_allclose(raw["final_worst"], interval(worst), rtol=1e-9)
  np.testing.assert_allclose(
    raw["averaged_model"], interval([0.81, 0.82, 0.83]), rtol=1e-9
  )
  assert raw["epochs_to_target"] == [2, 0]  # every seed at epoch 2
  assert raw["not_reached"] == 0
  np.testing.assert_allclose(raw["gbytes"][0], 2.0)
  np.testing.assert_allclose(raw["per_worker"], [final[s] for s in (1, 2, 3)])
  # Simulated time to the target: 200 steps of 10 ms compute, plus 200 ring
  # all-reduces of 4000 bytes among 8 workers at 1 Gbit/s with 50 us latency:
  # 2 (n - 1) messages of size / n each (independent of NetworkModel's code).
  per_allreduce = 2 * 7 * (study.LATENCY_S + (4000 / 8) * 8 / 1e9)
  np.testing.assert_allclose(raw["time_1"][0], 200 * (0.010 + per_allreduce), rtol=1e-6)
  # The target is reached in the last epoch, so the whole run took as long.
  np.testing.assert_allclose(raw["total_1"], raw["time_1"], rtol=1e-12)
  np.testing.assert_allclose(raw["consensus"], (0.2, 0.0), atol=1e-12)
  table = out.with_suffix(".md").read_text()
  assert f"| {cell} | 3 | {100 * interval(means)[0]:.2f} ± " in table
  assert (out.parent / "study.png").exists()


def test_report_keeps_the_text_above_the_marker_and_plots_alpha(tmp_path, monkeypatch):
  """Regenerating keeps the hand-written text; two grids that differ in the
  Dirichlet alpha get the summary figure and a time axis where asked."""
  grids = {
    f"a{alpha}": study.Grid(
      (study._cell("allreduce", method="allreduce"),),
      settings=study.SHORT + (("dirichlet_alpha", alpha),),
      time_axis=True,
      target=0.6,
      alpha_summary=True,
    )
    for alpha in (1.0, 0.1)
  }
  monkeypatch.setattr(study, "GRIDS", grids)
  for grid in grids:
    for seed in (1, 2):
      _fake_run(
        tmp_path / grid / "allreduce" / f"seed{seed}",
        [[0.5], [0.7]],
        [0.5, 0.7],
        num_epochs=2,
      )
  out = tmp_path / "out" / "hetero"
  out.parent.mkdir()
  out.with_suffix(".md").write_text(f"# By hand\n\nText.\n\n{study.GENERATED}\nold\n")
  args = ["report", *grids, "--root", str(tmp_path), "--out", str(out)]
  assert study.main(args) == 0
  text = out.with_suffix(".md").read_text()
  assert text.startswith(f"# By hand\n\nText.\n\n{study.GENERATED}\n")
  assert "old" not in text and "### a0.1" in text
  assert "| allreduce | 2 | 70.00 ± 0.00 | " in text
  assert "epochs to 60%" in text
  for name in ("hetero.png", "hetero_a1.0.png", "hetero_a0.1.png"):
    assert (out.parent / name).stat().st_size > 0, name
  # A grid at another alpha that is not one of the study's levels (a side
  # grid) does not make a summary.
  grids["side"] = dataclasses.replace(grids["a0.1"], alpha_summary=False)
  (tmp_path / "side").symlink_to(tmp_path / "a0.1")
  other = tmp_path / "out" / "other"
  args = ["report", "a1.0", "side", "--root", str(tmp_path), "--out", str(other)]
  assert study.main(args) == 0
  assert (out.parent / "other_side.png").exists()
  assert not (out.parent / "other.png").exists()


def test_paired_differences_match_seeds_and_the_low_degree_gap(tmp_path):
  rng = np.random.default_rng(1)
  runs = {"a": [], "b": []}
  expected = []
  for seed in (1, 2, 3, 4):
    acc = {name: rng.uniform(0.7, 0.9, size=8) for name in runs}
    for name in runs:
      if name == "a" and seed == 4:
        continue  # seed 4 of "a" missing: that seed is left out of the pair
      runs[name].append(
        dict(
          config=dict(seed=seed),
          records=[
            dict(test_accuracy=list(acc[name]), test_accuracy_averaged_model=0.8)
          ],
        )
      )
    if seed != 4:
      expected.append(acc["a"].min() - acc["b"].min())
  runs["b"].reverse()  # order of the runs does not matter, the seeds do
  d = study.paired_differences(runs, [("a", "b")])[("a", "b")]
  assert d["seeds"] == 3
  diffs = np.array(expected)
  np.testing.assert_allclose(
    d["final_worst"],
    [diffs.mean(), T_975_DF2 * diffs.std(ddof=1) / math.sqrt(3)],
    rtol=1e-9,
  )
  acc = np.array(runs["a"][0]["records"][-1]["test_accuracy"])
  rest = [w for w in range(8) if w not in (0, 4)]
  assert study._final(runs["a"][0])["low_degree_gap"] == pytest.approx(
    acc[rest].mean() - (acc[0] + acc[4]) / 2
  )


def _strict_json(text):
  """``json.loads`` that raises on NaN, Infinity and -Infinity (not JSON)."""

  def refuse(token):
    raise ValueError(f"not JSON: {token}")

  return json.loads(text, parse_constant=refuse)


def test_report_json_writes_null_for_numbers_that_do_not_exist(tmp_path):
  # One seed that never reaches the target: no epochs to it, no time to it,
  # and no interval for anything (one value).
  _fake_run(
    tmp_path / "paper" / "allreduce" / "seed1", [[0.5] * 8, [0.6] * 8], [0.5, 0.6], 2
  )
  out = tmp_path / "out" / "study"
  assert (
    study.main(["report", "paper", "--root", str(tmp_path), "--out", str(out)]) == 0
  )
  text = out.with_suffix(".json").read_text()
  for token in ("NaN", "Infinity"):
    assert token not in text
  raw = _strict_json(text)["paper"]
  cell = raw["allreduce"]
  assert cell["epochs_to_target"] == [None, None]
  assert cell["time_1"] == [None, None]
  assert cell["final_mean"] == [pytest.approx(0.6), None]
  assert cell["not_reached"] == 1
  assert raw["differences"]["dpsgd - allreduce"]["final_mean"] == [None, None]
  # What was read back formats as what was written from memory.
  assert study._fmt(*cell["epochs_to_target"]) == "not reached"
  assert study._fmt(*cell["final_mean"], 100) == "60.00"
  table = out.with_suffix(".md").read_text()
  row = (
    "| allreduce | 1 | 60.00 | 60.00 | 60.00 | 0.200 | not reached (1 not reached) |"
  )
  assert row in table


def test_the_committed_study_json_is_strict_json():
  import pathlib

  results = pathlib.Path(__file__).parents[2] / "experiments" / "results"
  for name in ("study.json", "compression.json", "overlap.json"):
    _strict_json((results / name).read_text())


def test_matcha_grids_say_their_intervals_leave_out_the_activation_draw():
  note = study.matcha_note("paper")
  assert "`matcha`, `aldsgd_matcha`" in note
  assert "`matcha_seed` 0" in note
  assert "not the activation draw" in note
  assert "`matcha_0.1`" in study.matcha_note("budgets16")
  assert study.matcha_note("low_degree") is None
  assert study.matcha_note("non_iid") is None


@pytest.mark.parametrize("grid", sorted(study.GRIDS))
def test_every_cell_is_a_config_the_trainer_accepts(grid):
  """The command's preset and overrides pass the trainer's checks."""
  from experiments.cifar import train

  for cell in study.GRIDS[grid].cells:
    command = study.command(study.GRIDS[grid], cell, 1, study.pathlib.Path("/tmp/x"))
    config_flag = next(a for a in command if a.startswith("--config="))
    assert config_flag.endswith(f":{cell.preset}") if cell.preset else True
    config = fashion_mnist.get_config(cell.preset)
    overrides = dict(study.COMMON + study.GRIDS[grid].settings + cell.overrides)
    overrides.pop("method", None)
    config.update(overrides)
    train.validate_config(config)
    assert not any(a.startswith("--config.method=") for a in command)
