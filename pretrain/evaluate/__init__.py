"""Evaluating a causal LM checkpoint as GPT-2 is judged: held-out perplexity and harness tasks.

  python -m pretrain.evaluate perplexity --init_from=RUN_OR_CONVERTED --text=FILE \
      [--max_length=N --stride=N --batch_size=N --step=N]
  python -m pretrain.evaluate lm-eval --model pretrain --model_args init_from=RUN_OR_CONVERTED \
      --tasks TASK [any flag of `lm_eval run`]

`init_from` is a training workdir (its newest checkpoint, or --step) or a folder written by
`python -m pretrain.convert from-hf`; both are opened by pretrain.sample.load_run with their own
tokenizer. perplexity.py holds the strided sliding-window method, harness.py the
lm-evaluation-harness model (`pip install -e '.[eval]'`), scoring.py the jitted scorer both use.
"""
