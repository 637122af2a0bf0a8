"""The t5 family: model, task, examples and HF conversion."""
