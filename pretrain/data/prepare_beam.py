"""The prepare pipeline on Apache Beam: each input unit is one element, `prepare.run_unit` its work.

  python -m pretrain.prepare --config=... --out=gs://bucket/store --runner=beam -- \\
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp \\
      --setup_file=./setup.py

Beam schedules (and retries) the units; the launching side finalizes the manifest as the local
runner does, so both write the same store. Workers read the tokenizer from the store itself
(`out/tokenizer/`), so they need only `out` and the corpus to be reachable, and this package
installed (`--setup_file` or a custom container on Dataflow).
"""

from typing import Any, Sequence

from pretrain.errors import PretrainError


def _run_unit(unit_json: Any, args: tuple) -> int:
  from pretrain.data import prepare  # pylint: disable=g-import-not-at-top  (imported on the worker)

  return prepare.run_unit(unit_json, *args)["index"]


def run(units: Sequence[Any], args: tuple, pipeline_args: Sequence[str]) -> None:
  """Runs `prepare.run_unit(unit, *args)` for every unit (JSON) on the runner `pipeline_args` name."""
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PretrainError(f"--runner=beam needs apache-beam installed ({e})") from None
  if not units:
    return
  options = PipelineOptions(list(pipeline_args))
  with beam.Pipeline(options=options) as p:
    _ = (
      p
      | "Units" >> beam.Create(list(units))
      | "Spread"
      >> beam.Reshuffle()  # One unit per worker slot, not all units in the Create's bundle.
      | "Prepare" >> beam.Map(_run_unit, tuple(args))
    )
