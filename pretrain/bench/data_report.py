"""The tables pretrain.bench.data prints from its results."""

from pretrain.bench.data_children import MB

# The chips the data path's throughput is set against: (name, platform, device kind of metrics' peak table).
CHIPS = (("TPU v5p", "tpu", "TPU v5p"), ("H100", "gpu", "NVIDIA H100 80GB HBM3"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  line = lambda cells: "| " + " | ".join(cells) + " |"
  rule = "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"
  return [line(header), rule] + [line(r) for r in rows]


def format_tables(results: dict) -> str:
  """The results as Markdown tables."""
  sizes, cores = results["sizes"], results["cores"]
  mb = lambda r: f"{r['text_bytes'] / MB:,.1f}"
  lines = [
    f"Corpus: {results['corpus']}; tokenizer vocab {results['vocab_size']}; {cores} cores.",
    "",
  ]
  prep = [r for r in sizes if "prepare" in r]
  if prep:
    lines += ["Preparation (MB of text per second; MB = 2^20 bytes):", ""]
    lines += _table(
      [
        "corpus MB",
        "files",
        "units (workers)",
        "prepare s",
        "MB/s",
        "MB/s/core",
        "datasets s (load + map)",
        "MB/s",
        "MB/s/core",
        "prepare / datasets",
      ],
      [
        [
          mb(r),
          str(r["files"]),
          f"{r['prepare']['units']} ({r['prepare']['workers']})",
          f"{r['prepare']['seconds']:.1f}",
          f"{r['prepare']['mb_per_s']:.2f}",
          f"{r['prepare']['mb_per_s_per_core']:.2f}",
          f"{r['datasets']['seconds']:.1f} ({r['datasets']['load_seconds']:.1f} + "
          f"{r['datasets']['map_seconds']:.1f})",
          f"{r['datasets']['mb_per_s']:.2f}",
          f"{r['datasets']['mb_per_s_per_core']:.2f}",
          f"{r['prepare_over_datasets']:.2f}x",
        ]
        for r in prep
      ],
    )
    out = [
      f"{mb(r)} MB -> store {r['prepare']['store_mb']:,.1f} MB ({r['prepare']['train_tokens']:,} train "
      f"tokens), datasets cache {r['datasets']['cache_mb']:,.1f} MB ({r['datasets']['tokens']:,} tokens)"
      for r in prep
    ]
    lines += ["", "Output: " + "; ".join(out), ""]
  lines += [
    "Training process (bert_tiny on the store, fresh subprocess; seconds from process start; MiB):",
    "",
  ]
  rows = []
  for r in sizes:
    t, m = r["train"], r["in_memory"]
    old = (
      ["skipped", m["skipped"]]
      if "skipped" in m
      else [
        f"{m['seconds']:.1f}",
        f"{m['peak_rss_mib']:,.0f} (+{m['peak_rss_mib'] - m['base_rss_mib']:,.0f})",
      ]
    )
    rows.append(
      [
        mb(r),
        f"{t['first_batch_s']:.1f} ({t['data_startup_s']:.2f})",
        f"{t['first_step_done_s']:.1f}",
        f"{t['peak_rss_first_batch_mib']:,.0f} ({t['peak_rss_first_batch_increase']:+.1%})",
        f"{t['peak_rss_mib']:,.0f}",
        f"{t['peak_rss_increase']:+.1%}",
        f"{t['rss_anon_mib']:,.0f}",
        f"{t['rss_file_mib']:,.0f}",
        *old,
      ]
    )
  lines += _table(
    [
      "corpus MB",
      "first batch s (data part)",
      "first step done s",
      "peak RSS to first batch (vs smallest)",
      "peak RSS",
      "vs smallest",
      "RssAnon end",
      "RssFile end",
      "old path s",
      "old path peak RSS (+ over its start)",
    ],
    rows,
  )
  tg = results["targets"]
  lines += [
    "",
    f"Targets, {mb(sizes[0])} -> {mb(sizes[-1])} MB: peak RSS {tg['peak_rss_increase']:+.1%} "
    f"({'met' if tg['rss_met'] else 'MISSED'}: < 5%; to the first batch "
    f"{tg['peak_rss_first_batch_increase']:+.1%}); first batch {tg['first_batch_s']:.1f} s "
    f"({'met' if tg['startup_met'] else 'MISSED'}: < 10 s)",
    "",
  ]
  per_chip = {(c["chip"], c["seq"]): c["examples_per_s"] for c in results["consumption"]}
  lines += [
    "bert_base at MFU 0.5 consumes per chip (examples/s): "
    + ", ".join(f"{chip} seq {seq} {v:,.0f}" for (chip, seq), v in per_chip.items()),
    "",
  ]
  rows = []
  for r in sizes:
    for s in r.get("streams", []):
      fed = [f"{s['store'] / per_chip[(chip, s['seq'])]:.1f}" for chip, _, _ in CHIPS]
      rows.append(
        [
          mb(r),
          str(s["seq"]),
          f"{s['store']:,.0f}",
          f"{s['in_memory']:,.0f}",
          f"{s['store'] / s['in_memory']:.2f}x",
          *fed,
        ]
      )
  if rows:
    lines += ["BatchStream (BERT task, batch 256, 2 threads, examples/s after warm-up):", ""]
    lines += _table(
      [
        "corpus MB",
        "seq",
        "store",
        "in-memory",
        "store / in-memory",
        *[f"{c} chips fed" for c, _, _ in CHIPS],
      ],
      rows,
    )
  for name, what in (
    ("prepare_unit", "one prepare unit (run_unit)"),
    ("store_batches", "20 store batches"),
  ):
    if name in results.get("profile", {}):
      p = results["profile"][name]
      lines += [
        "",
        f"cProfile, {what}: {p['seconds']:.2f} s wall; own time: "
        + "; ".join(f"{t['function']} {t['seconds']:.2f} s ({t['share']:.0%})" for t in p["top"]),
      ]
  return "\n".join(lines)
