"""python -m pretrain.finetune: one fine-tuning run, or the GLUE suite.

  python -m pretrain.finetune --config=configs/finetune/sst2.py \\
    --config.init_from=runs/bert_base --config.finetune.data_dir=glue_data --workdir=runs/sst2
  python -m pretrain.finetune suite --suite=glue --init_from=runs/bert_base \\
    --data_dir=glue_data --workdir=runs/glue [--seeds=0,1,2,3,4] [--learning_rates=2e-5,3e-5,5e-5]

Bad input (a label outside the label set, a missing column, an empty split, an
init checkpoint whose family takes no head, a tokenizer that is not the
checkpoint's) ends with one `error:` line and exit code 2, before anything is written.
"""

import sys

from absl import app
from absl import flags

from pretrain import train as train_lib


def _define_suite_flags() -> None:
  flags.DEFINE_string("suite", "glue", "The suite: glue.")
  flags.DEFINE_string("init_from", None, "suite: the pretrained checkpoint every task starts from.")
  flags.DEFINE_string(
    "data_dir", "", "suite: the folder holding the GLUE task folders (CoLA/, ...)."
  )
  flags.DEFINE_list("tasks", None, "suite: the tasks to run (default: all of the suite's).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "suite: the seeds of every grid point.")
  flags.DEFINE_list(
    "learning_rates", None, "suite: the learning rates (default: each task config's grid)."
  )
  flags.DEFINE_bool("skip_missing", False, "suite: skip tasks whose folder is missing.")
  flags.DEFINE_list("overrides", [], "suite: KEY=VALUE config overrides for every job.")


def main(argv):
  from pretrain.finetune import run  # pylint: disable=import-outside-toplevel

  if len(argv) > 1 and argv[1] == "suite":
    from pretrain.finetune import suite  # pylint: disable=import-outside-toplevel

    sys.exit(suite.main(flags.FLAGS))
  if len(argv) > 1:
    print(f"error: unknown command {argv[1]!r} (expected: suite, or none)", file=sys.stderr)
    sys.exit(2)
  train_lib.main(argv, job=run.finetune)


if __name__ == "__main__":
  train_lib.define_flags()
  _define_suite_flags()
  app.run(main)
