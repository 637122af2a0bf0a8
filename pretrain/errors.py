"""The one exception type for bad user input.

Entry points catch it, print its message on one line and exit non-zero; every
check that raises it runs before anything is written, so a failed run never
touches an existing checkpoint.
"""


class PretrainError(Exception):
  """Bad input (config, corpus, tokenizer, mesh, checkpoint) with a message naming the cause."""
