"""`python -m pretrain.bench`: the training-step benchmark (pretrain/bench/step.py)."""

from absl import app

from pretrain.bench import step

if __name__ == "__main__":
  step.define_flags()
  app.run(step.main)
