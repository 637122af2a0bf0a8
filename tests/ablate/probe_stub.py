"""A fast stand-in for `pretrain.finetune.finetune` (a real fine-tune per job would make the sweep test
several times longer): a job function with the fine-tuning contract (config with init_from -> its last
row with "step" and "eval_score"), and `job_steps` beside it.

Its score is a function of the pretraining job it starts from (1 / that job's last eval loss), so a
test can check that each (variant, seed) probe read its own pretraining workdir.
"""

import json
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The stand-in's fine-tuning config (as configs/finetune/<task>.py give one)."""
  return ml_collections.ConfigDict(dict(init_from="", train=dict(steps=3, seed=0), note=""))


def job_steps(config) -> int:
  return int(config.train.steps)


def finetune(config, workdir: str) -> dict:
  with open(os.path.join(config.init_from, "result.json"), encoding="utf-8") as f:
    pretrained = json.load(f)
  if pretrained["status"] != "done":
    raise RuntimeError(f"{config.init_from} is not a finished pretraining job")
  with open(os.path.join(config.init_from, "metrics.jsonl"), encoding="utf-8") as f:
    eval_loss = [json.loads(line) for line in f if '"eval_loss"' in line][-1]["eval_loss"]
  row = {"step": config.train.steps, "eval_score": 1.0 / eval_loss, "seed": config.train.seed}
  with open(os.path.join(workdir, "finetuned.json"), "w", encoding="utf-8") as f:
    json.dump(dict(row, init_from=config.init_from, note=config.note), f)
  return row
