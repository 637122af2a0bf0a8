"""GLUE mrpc with BERT's fine-tuning recipe (pretrain/finetune/config.py).

  python -m pretrain.finetune --config=configs/finetune/mrpc.py --config.init_from=RUN \
    --config.finetune.data_dir=glue_data --workdir=runs/mrpc
"""

from pretrain.finetune.config import finetune_config


def get_config():
  return finetune_config("mrpc")
