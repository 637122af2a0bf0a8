"""The bert family: model, task, examples and HF conversion."""
