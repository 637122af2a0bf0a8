"""The gpt2 family: model, task, examples and HF conversion."""
