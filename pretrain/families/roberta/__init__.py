"""The roberta family: model, task, examples and HF conversion."""
