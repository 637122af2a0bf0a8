"""Fine-tuning pretrained checkpoints on labelled tasks (GLUE, files, the embedded task), and the GLUE suite.

  python -m pretrain.finetune --config=configs/finetune/sst2.py --config.init_from=RUN --workdir=DIR
  python -m pretrain.finetune suite --suite=glue --init_from=RUN --data_dir=glue_data --workdir=DIR

`finetune(config, workdir)` (pretrain/finetune/run.py) is the job function, `job_steps(config)` the
steps it trains.
"""

from pretrain.finetune.run import finetune
from pretrain.finetune.run import job_steps

__all__ = ["finetune", "job_steps"]
