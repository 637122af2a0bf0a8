"""Learning parity with HF torch: the project's train step and the family's HF torch model trained on the
same batches with the same recipe, compared on the same held-out batches over several seeds.

  python -m pretrain.bench.learning --config=configs/bert_tiny.py \
    --config.model.pre_layer_norm=False --config.model.dtype=float32 \
    --steps=500 --seeds=0,1,2 [--init=shared|hf] [--text=FILE] [--json_out=F]

Seed s sets data.seed and train.seed. Its batches are the project's own example stream of the config
(global examples s*B.. of the train split, BERT: pairs, NSP, fresh 80/10/10 masks) and are fed to both
sides; the held-out batches (eval.batch_size x eval.num_batches of the held-out split, data seed of the
config + 1, as train.py evaluates) are the same for every seed and side. The project side is the real
jitted step (pretrain/training/step.py) with make_optimizer's AdamW; the torch side is
pretrain/bench/learning_torch.py. --init=shared (the default) starts HF from the project's init,
converted with pretrain/convert, which takes the init out of the comparison; --init=hf gives HF its
own init (torch seed s). Per-step train losses of both are kept: with shared init, dropout 0 and f32
they agree to float noise for the first steps, and the first step where they part names a difference.

The report: per seed and per side the held-out metrics, their mean and sd over seeds, and the paired
t-test (pretrain/ablate/stats.py; seed s of the project against seed s of HF: the same batches) of
project - HF, with its 95% interval.
"""

import dataclasses
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from pretrain import families
from pretrain import sharding
from pretrain.ablate import stats
from pretrain.bench import common
from pretrain.bench import learning_torch
from pretrain.data import pipeline
from pretrain.data import sources as data_sources
from pretrain.errors import PretrainError
from pretrain.training import step as step_lib
from pretrain.training.optimizer import make_optimizer

INITS = ("shared", "hf")
# The held-out metrics compared, per family: (name, higher is better).
METRICS = {
  "bert": (("mlm_loss", False), ("mlm_accuracy", True), ("nsp_loss", False)),
  "gpt2": (("loss", False), ("accuracy", True)),
}
ALPHA = 0.05


@dataclasses.dataclass
class SeedData:
  """What both sides of one seed see: the task, its train batches and the held-out batches."""

  task: object
  train: list[dict]
  heldout: list[dict]


def seed_config(config, seed: int, steps: int, text: str = ""):
  """The config of seed `seed`: data.seed and train.seed set, train.steps = steps (the schedule's length)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.data.seed = int(config.data.seed) + seed
    c.train.seed = seed
    c.train.steps = steps
    if text:
      c.data.source, c.data.paths = "text", text
  return c


def seed_data(config, base_data_seed: int, steps: int) -> SeedData:
  """The task, `steps` train batches of the config's stream, and the held-out batches (seed-independent)."""
  tokenizer, stores = data_sources.open_stores(config.data, config.tokenizer)
  task = families.get_task(config, tokenizer)
  if task.name not in METRICS:
    raise PretrainError(
      f"the learning comparison supports {', '.join(METRICS)}, not task {task.name!r}"
    )
  run_length = int(config.data.mixture_run_length)
  examples = data_sources.example_source(
    task, stores, "train", int(config.data.seed), run_length=run_length
  )
  b = int(config.train.batch_size)
  train = [examples.batch(np.arange(t * b, (t + 1) * b, dtype=np.int64)) for t in range(steps)]
  heldout_examples = data_sources.example_source(
    task, stores, "heldout", base_data_seed + 1, run_length=run_length
  )
  heldout = pipeline.fixed_batches(
    heldout_examples, int(config.eval.batch_size), int(config.eval.num_batches)
  )
  return SeedData(task, train, list(heldout))


def run_project(config, data: SeedData, log=common.log) -> dict:
  """The project's jitted train step over the seed's batches: {init_params, train_loss, eval, seconds}.

  The init is converted to the HF model's tensors before any step, so a model HF cannot express
  (e.g. BERT's pre_layer_norm) is refused at once.
  """
  task, steps = data.task, len(data.train)
  model = task.build_model()
  tx, schedule = make_optimizer(config.optimizer, steps)
  mesh = sharding.make_mesh(config.mesh)
  b = int(config.train.batch_size)
  fns = step_lib.build(task, model, tx, schedule, mesh, b, seed=int(config.train.seed))
  state = fns.init_state(int(config.train.seed))
  init_params = jax.device_get(state.params)  # A copy: the step donates the state.
  learning_torch.hf_state(task, init_params)
  train_step, _ = fns.compile_train_step()
  losses, lrs = [], []
  t0 = time.perf_counter()
  with sharding.mesh_context(mesh):
    for t, batch in enumerate(data.train):
      state, m = train_step(state, sharding.make_global_batch(batch, mesh))
      losses.append(float(m["loss"]))
      lrs.append(float(m["learning_rate"]))
      if (t + 1) % 100 == 0:
        log(f"  project step {t + 1}/{steps} loss {losses[-1]:.4f}")
  seconds = time.perf_counter() - t0
  sums = [fns.eval_step(state.params, sharding.make_global_batch(h, mesh)) for h in data.heldout]
  total = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
  evals = {k: float(v) for k, v in task.finalize(total).items()}
  return dict(
    init_params=init_params, train_loss=losses, learning_rate=lrs, eval=evals, seconds=seconds
  )


def run_hf(
  config,
  data: SeedData,
  learning_rates: list[float],
  init_params,
  init: str,
  *,
  threads: int = 1,
  log=common.log,
) -> dict:
  """HF torch over the same batches at the same per-step learning rates: {train_loss, eval, seconds}."""
  task = data.task
  own = int(config.train.seed) if init == "hf" else None
  model = learning_torch.build_model(task, init_params, own_init_seed=own)
  trainer = learning_torch.TorchTrainer(model, config.optimizer, threads=threads)
  losses = []
  t0 = time.perf_counter()
  for t, (batch, lr) in enumerate(zip(data.train, learning_rates)):
    losses.append(trainer.step(task, batch, lr)["loss"])
    if (t + 1) % 100 == 0:
      log(f"  HF step {t + 1}/{len(data.train)} loss {losses[-1]:.4f}")
  seconds = time.perf_counter() - t0
  return dict(train_loss=losses, eval=trainer.evaluate(task, data.heldout), seconds=seconds)


def first_divergence(a: list[float], b: list[float], tol: float) -> int | None:
  """The first step (from 1) whose train losses differ by more than `tol` relative; None if none does."""
  for t, (x, y) in enumerate(zip(a, b)):
    if abs(x - y) > tol * max(abs(x), abs(y), 1e-12):
      return t + 1
  return None


def compare_sides(family: str, per_seed: dict[int, dict]) -> dict:
  """Per metric: each side's Summary over seeds and the paired comparison project - HF."""
  out = {}
  for name, higher in METRICS[family]:
    project = {s: r["project"][name] for s, r in per_seed.items()}
    hf = {s: r["hf"][name] for s, r in per_seed.items()}
    out[name] = dict(
      project=dataclasses.asdict(stats.summarize(project.values())),
      hf=dataclasses.asdict(stats.summarize(hf.values())),
      comparison=dataclasses.asdict(
        stats.compare(project, hf, higher_is_better=higher, alpha=ALPHA, test="t")
      ),
    )
  return out


def run_comparison(
  config,
  *,
  steps: int,
  seeds: list[int],
  init: str = "shared",
  text: str = "",
  trace_tol: float = 1e-4,
  torch_threads: int = 1,
  log=common.log,
) -> dict:
  """Both sides over every seed; the results dict `format_table` prints."""
  if init not in INITS:
    raise PretrainError(f"--init={init!r}: expected one of {', '.join(INITS)}")
  if steps < 1 or not seeds:
    raise PretrainError("the comparison needs steps >= 1 and at least one seed")
  per_seed, traces = {}, {}
  family = None
  for seed in seeds:
    c = seed_config(config, seed, steps, text)
    data = seed_data(c, int(config.data.seed), steps)
    family = data.task.name
    log(f"seed {seed}: project")
    project = run_project(c, data, log)
    log(f"seed {seed}: HF torch")
    hf = run_hf(
      c,
      data,
      project["learning_rate"],
      project["init_params"],
      init,
      threads=torch_threads,
      log=log,
    )
    per_seed[seed] = {"project": project["eval"], "hf": hf["eval"]}
    traces[seed] = dict(
      project=project["train_loss"],
      hf=hf["train_loss"],
      first_divergence=first_divergence(project["train_loss"], hf["train_loss"], trace_tol),
      seconds={"project": project["seconds"], "hf": hf["seconds"]},
    )
    log(
      f"seed {seed}: eval project {project['eval']} / HF {hf['eval']}; "
      f"train losses part at step {traces[seed]['first_divergence']}"
    )
  task = data.task
  m = task.model_config
  return dict(
    common.environment(f"{jax.devices()[0].device_kind} x{jax.device_count()}", hf=True),
    family=family,
    model=f"project {type(task.build_model()).__name__} vs HF {learning_torch.HF_MODELS[family]}",
    shape=f"L{m.num_layers} H{m.hidden_size} A{m.num_heads} vocab {m.vocab_size}",
    dtype=m.dtype,
    dropout=[m.dropout_rate, m.attention_dropout_rate],
    pre_layer_norm=getattr(m, "pre_layer_norm", None),
    batch=[int(config.train.batch_size), task.tokens_per_example],
    heldout_examples=int(config.eval.batch_size) * int(config.eval.num_batches),
    optimizer={
      k: config.optimizer[k]
      for k in ("name", "learning_rate", "warmup_steps", "decay", "weight_decay", "grad_clip_norm")
    },
    steps=steps,
    seeds=list(seeds),
    init=init,
    trace_tol=trace_tol,
    per_seed=per_seed,
    traces=traces,
    summary=compare_sides(family, per_seed),
  )


def _fmt(x: float) -> str:
  return "nan" if x != x else f"{x:.4f}"  # pylint: disable=comparison-with-itself


def format_table(results: dict) -> str:
  """Per seed and side the held-out metrics, then mean ± sd and the paired test of project - HF."""
  names = [n for n, _ in METRICS[results["family"]]]
  lines = [
    common.environment_line(results),
    f"{results['model']} {results['shape']}, {results['dtype']}, dropout {results['dropout']}, "
    f"batch {results['batch'][0]} x {results['batch'][1]}, {results['steps']} steps, "
    f"init {results['init']}, held-out {results['heldout_examples']} examples",
    "",
    "| seed | side | " + " | ".join(names) + " | train losses part at step |",
    "|---|---|" + "---:|" * len(names) + "---:|",
  ]
  for seed, r in results["per_seed"].items():
    part = results["traces"][seed]["first_divergence"]
    for side in ("project", "hf"):
      cells = " | ".join(_fmt(r[side][n]) for n in names)
      lines.append(f"| {seed} | {side} | {cells} | {part if side == 'hf' else ''} |")
  lines.append("")
  lines.append(
    "| metric | project mean ± sd | HF mean ± sd | project - HF [95% CI] | p (paired t) | verdict |"
  )
  lines.append("|---|---:|---:|---:|---:|---|")
  for name in names:
    s = results["summary"][name]
    p, h, c = s["project"], s["hf"], s["comparison"]
    lines.append(
      f"| {name} | {_fmt(p['mean'])} ± {_fmt(p['sd'])} | {_fmt(h['mean'])} ± {_fmt(h['sd'])} | "
      f"{c['diff']:+.4f} [{_fmt(c['diff_ci_low'])}, {_fmt(c['diff_ci_high'])}] | "
      f"{_fmt(c['p_value'])} | {c['verdict']} |"
    )
  return "\n".join(lines)


def define_flags() -> None:
  """CLI flags; defined only when run as a program so importing this module defines none."""
  config_flags.DEFINE_config_file(
    "config", "configs/bert_tiny.py", "Config file.", lock_config=True
  )
  flags.DEFINE_integer("steps", 500, "Train steps per seed and side (the schedule's length).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data.seed and train.seed offsets).")
  flags.DEFINE_enum("init", "shared", list(INITS), "shared: HF starts from the project's init.")
  flags.DEFINE_string("text", "", "A text corpus (BERT's format) instead of the config's data.")
  flags.DEFINE_float("trace_tol", 1e-4, "Relative train-loss difference that counts as parting.")
  flags.DEFINE_integer(
    "torch_threads",
    1,
    "torch's intra-op threads (on cores shared with other jobs, 1 ran a step ~3x faster than 2).",
  )
  flags.DEFINE_string("json_out", "", "Also write the results (with per-step losses) as JSON.")


def _measure() -> dict:
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise PretrainError(f"--seeds={','.join(FLAGS.seeds)}: expected integers") from e
  return run_comparison(
    FLAGS.config,
    steps=FLAGS.steps,
    seeds=seeds,
    init=FLAGS.init,
    text=FLAGS.text,
    trace_tol=FLAGS.trace_tol,
    torch_threads=FLAGS.torch_threads,
  )


def main(argv):
  del argv
  common.run_main(_measure, format_table, flags.FLAGS.json_out)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  define_flags()
  app.run(main)
