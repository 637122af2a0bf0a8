"""The lm-evaluation-harness model `pretrain`: its loglikelihoods, rolling loglikelihoods and greedy
generations equal those computed directly with transformers on the same GPT-2, and the harness's own
command line runs a local task file on it."""

import glob
import json
import os

import numpy as np
import pytest
import torch
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from pretrain.errors import PretrainError
from pretrain.evaluate import __main__ as evaluate_cli
from pretrain.evaluate import harness

EOT = 0  # <|endoftext|> of the test vocabulary (tests/evaluate/conftest.py).


def ids_of(text: str) -> list[int]:
  return [int(w[1:]) + 6 for w in text.split()]  # w<i> is id i + 6.


def hf_logprobs(model, ids: list[int]) -> np.ndarray:
  """float64 [len(ids) - 1]: log p(ids[i] | ids[:i]) for i >= 1."""
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].double()
  return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


def hf_loglikelihood(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
  whole = context + continuation
  logp = hf_logprobs(model, whole)[-len(continuation) :]
  with torch.no_grad():
    logits = model(torch.tensor([whole])).logits[0]
  greedy = logits[len(context) - 1 : -1].argmax(-1).tolist() == continuation
  return float(logp.sum()), greedy


@pytest.fixture(scope="module")
def lm(gpt2):
  return harness.PretrainLM(init_from=gpt2[1], batch_size="3", max_length="32")


def requests(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_the_model_is_in_the_harness_registry():
  assert get_model("pretrain") is harness.PretrainLM


def test_loglikelihoods_equal_the_direct_computation(gpt2, lm, words_text):
  model, _ = gpt2
  long_context = words_text(40, seed=1).strip()  # Past max_length=32: cut from the left.
  pairs = [("w1 w2 w3", " w4"), ("w7", " w8 w9 w10"), ("", "w3 w4"), (long_context, " w5 w6")]
  got = lm.loglikelihood(requests("loglikelihood", pairs))
  for (context, continuation), (logp, greedy) in zip(pairs, got):
    ctx = ids_of(context) or [EOT]  # An empty context is the end-of-text token.
    whole = (ctx + ids_of(continuation))[-33:]
    want, want_greedy = hf_loglikelihood(
      model, whole[: -len(ids_of(continuation))], ids_of(continuation)
    )
    assert logp == pytest.approx(want, rel=1e-4, abs=1e-4) and greedy == want_greedy


def test_rolling_loglikelihood_equals_the_direct_computation(gpt2, lm, words_text):
  model, _ = gpt2
  short, long = words_text(20, seed=2), words_text(75, seed=3)
  got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(short,), (long,)]))
  # One window: every token after end-of-text.
  assert got[0] == pytest.approx(hf_logprobs(model, [EOT] + ids_of(short)).sum(), rel=1e-4)
  windows = map(
    lm_utils.make_disjoint_window,
    lm_utils.get_rolling_token_windows(ids_of(long), EOT, max_seq_len=32, context_len=1),
  )
  want = sum(hf_logprobs(model, c + t)[-len(t) :].sum() for c, t in windows)
  assert got[1] == pytest.approx(want, rel=1e-4)


def test_greedy_generation_equals_transformers(gpt2, lm):
  model, _ = gpt2
  context = "w3 w1 w4 w1 w5"
  (text,) = lm.generate_until(requests("generate_until", [(context, {"max_gen_toks": 6})]))
  ids = [EOT] + ids_of(context)
  for _ in range(6):
    with torch.no_grad():
      ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
  new = [i for i in ids[len(ids_of(context)) + 1 :]]
  new = new[: new.index(EOT)] if EOT in new else new
  assert text == " ".join(f"w{i - 6}" if i >= 6 else "" for i in new).strip()


def test_bad_model_args_are_refused(gpt2, bert_converted):
  with pytest.raises(PretrainError, match="init_from=RUN_OR_CONVERTED is required"):
    harness.PretrainLM()
  with pytest.raises(PretrainError, match="a masked LM"):
    harness.PretrainLM(init_from=bert_converted)
  with pytest.raises(PretrainError, match="max_length=65 exceeds the model's 64"):
    harness.PretrainLM(init_from=gpt2[1], max_length="65")
  with pytest.raises(PretrainError, match="batch_size='x' must be an integer"):
    harness.PretrainLM(init_from=gpt2[1], batch_size="x")


TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_the_harness_command_line_runs_a_local_task(gpt2, tmp_path, capsys):
  model, converted = gpt2
  docs = [
    {
      "context": f"w{i} w{i + 1} w{i + 2}",
      "choices": [f" w{i + 3}", " w40", f" w{50 - i}"],
      "label": i % 3,
    }
    for i in range(6)
  ]
  data = tmp_path / "tiny_choice.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "tiny_choice.yaml").write_text(TASK.format(data=data))
  code = evaluate_cli.main(
    [
      "lm-eval",
      "--model=pretrain",
      f"--model_args=init_from={converted},batch_size=4",
      "--tasks=tiny_choice",
      f"--include_path={tmp_path / 'tasks'}",
      f"--output_path={tmp_path / 'out'}",
    ]
  )
  assert code == 0, capsys.readouterr().err[-3000:]
  (results_file,) = glob.glob(os.path.join(tmp_path, "out", "**", "results_*.json"), recursive=True)
  acc = json.load(open(results_file))["results"]["tiny_choice"]["acc,none"]
  # The harness's pick: the choice of highest loglikelihood after the context.
  picks = [
    np.argmax([hf_loglikelihood(model, ids_of(d["context"]), ids_of(c))[0] for c in d["choices"]])
    for d in docs
  ]
  assert acc == pytest.approx(np.mean([p == d["label"] for p, d in zip(picks, docs)]))
  assert "tiny_choice" in capsys.readouterr().out  # The harness's results table.
