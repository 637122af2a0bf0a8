"""Bad input to fine-tuning: one `error:` line and exit code 2 from the CLI, a PretrainError naming the cause
from the library, and nothing written."""

import os
import subprocess
import sys

import pytest

from pretrain.errors import PretrainError
from pretrain.finetune import finetune

from task_files import write_jsonl  # pylint: disable=g-import-not-at-top,wrong-import-position
from glue_files import LAYOUTS, write_glue  # pylint: disable=g-import-not-at-top,wrong-import-position
from hf_folders import save_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_label_outside_the_label_set(learnable_config, tmp_path):
  c = learnable_config()
  dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "house the cat", "label": "perhaps"}])
  workdir = tmp_path / "run"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "pretrain.finetune",
      "--config=configs/finetune/sst2.py",
      f"--config.init_from={c.init_from}",
      "--config.finetune.task=files",
      f"--config.finetune.train_file={c.finetune.train_file}",
      f"--config.finetune.dev_file={dev}",
      "--config.finetune.text_fields=text",
      f"--workdir={workdir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert (
    last.startswith("error: ") and "label 'perhaps' is not one of" in last and "dev.jsonl" in last
  )
  assert not workdir.exists()


def _gpt2_run(tmp_path):
  return save_checkpoint(
    tmp_path / "gpt2", 1, {"w": [0.0]}, {"task": {"name": "gpt2"}, "model": {}}
  )


def _other_tokenizer(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
  return str(path)


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda c, t: c.update(init_from=_gpt2_run(t)), r"'gpt2' checkpoint, whose family cannot take"),
    (
      lambda c, t: c.finetune.update(tokenizer_path=_other_tokenizer(t)),
      r"is not the one the init checkpoint was trained with",
    ),
    (
      lambda c, t: c.finetune.update(dev_file=write_jsonl(t / "empty.jsonl", [])),
      r"the dev split .*empty.jsonl has no examples",
    ),
    (
      lambda c, t: c.finetune.update(
        task="rte",
        data_dir=write_glue(
          t / "glue", {"rte": LAYOUTS["rte"]}, lambda _, f, lines: [lines[0], "0\tA."]
        ),
      ),
      r"line 2: column 'sentence2' is missing",
    ),
    (lambda c, t: c.finetune.update(max_seq_length=128), r"exceeds the model's 64 positions"),
    (lambda c, t: c.update(init_from=str(t / "nowhere")), r"nowhere is not a directory"),
  ],
)
def test_bad_input_is_refused_before_anything_is_written(learnable_config, tmp_path, edit, message):
  c = learnable_config()
  edit(c, tmp_path)
  with pytest.raises(PretrainError, match=message):
    finetune(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
