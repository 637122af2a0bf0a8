"""GPT-2's part of the benchmark (pretrain/bench/reference.py): HF's GPT2LMHeadModel of the same shape."""

from pretrain.bench import reference

# Chunked windows of the document stream: every position is a target.
FULL_LENGTH_DATA = {"packing": False}
tokenizer_vocab = reference.tokenizer_vocab
ffn_dims = reference.ffn_dims


def describe(task, batch_size: int) -> str:
  return f"GPT-2 {reference.layers_shape(task.model_config, batch_size, task.seq_len)}"


def build(transformers, task, b: dict):
  m = task.model_config
  hf_config = transformers.GPT2Config(
    vocab_size=m.vocab_size,
    n_positions=m.max_position_embeddings,
    n_embd=m.hidden_size,
    n_layer=m.num_layers,
    n_head=m.num_heads,
    n_inner=m.intermediate_size,
    activation_function="gelu_new",
    resid_pdrop=m.dropout_rate,
    embd_pdrop=m.dropout_rate,
    attn_pdrop=m.attention_dropout_rate,
    layer_norm_epsilon=m.layer_norm_eps,
    initializer_range=m.initializer_range,
    bos_token_id=None,
    eos_token_id=None,
  )  # GPT-2's 50256 is outside a smaller vocabulary; training never reads them.
  # HF shifts the labels itself: labels = inputs.
  inputs = {
    "input_ids": reference.long_tensor(b["input_ids"]),
    "labels": reference.long_tensor(b["input_ids"]),
  }
  return transformers.GPT2LMHeadModel(hf_config), inputs


def flops_per_example(task) -> float:
  return task.train_flops_per_example()


def notes(task) -> list[str]:
  return [
    f"HF shifts labels inside the model: its loss covers {task.seq_len - 1} positions, the "
    f"project's {task.seq_len}; the matmuls are the same."
  ]
