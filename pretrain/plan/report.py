"""A plan as the text the CLI prints: memory per device against the HBM, FLOPs, collectives, the roofline."""

GIB = 2**30


def _bytes(n: float) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} B"


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def overrides(p: dict) -> str:
  """The plan's settings as the train command's overrides (what --search prints per candidate)."""
  s, mesh = p["settings"], p["mesh"]
  return " ".join(
    [
      f"--config.model.remat_policy={s['remat_policy']}",
      f"--config.train.grad_accum_steps={s['grad_accum_steps']}",
      *(f"--config.mesh.{axis}={mesh[axis]}" for axis in ("data", "fsdp", "tensor")),
    ]
  )


def format_plan(p: dict) -> str:
  """A plan, or a run in phases: each phase's plan, then whether the run fits."""
  if "phases" not in p:
    return _format_one(p)
  lines = []
  for q in p["phases"]:
    ph = q["phase"]
    lines += [f"phase {ph['name']} (steps {ph['start_step']}..{ph['end_step']}):", _format_one(q)]
  if p["fits"]:
    r = p["roofline"]
    lines.append(
      f"run: every phase ({len(p['phases'])}) fits, peak {_bytes(p['memory']['peak'])}; averaged over "
      f"the steps: step {_ms(r['step_seconds'])}, {r['tokens_per_sec']:,.0f} tokens/s, "
      f"MFU {r['mfu']:.1%}, {r['run_seconds'] / 3600:.1f} h for the run"
    )
  else:
    why = "; ".join(x for x in (p.get("refusal"), p.get("crash")) if x)
    lines.append(f"run: DOES NOT FIT (every phase must): {why}")
  return "\n".join(lines)


def _format_one(p: dict) -> str:
  s, m = p["settings"], p["memory"]
  lines = [
    f"plan: {p['task']} ({p['num_params']:,} parameters) on {p['target']}: {p['devices']} x {p['chip']}"
    f" ({p['slices']} slice{'s' * (p['slices'] > 1)}, {p['hosts']} host{'s' * (p['hosts'] > 1)}),"
    f" mesh {p['mesh']}",
    f"  batch {s['batch_size']} x {p['tokens_per_step'] // s['batch_size']} tokens, grad_accum_steps "
    f"{s['grad_accum_steps']}, remat {s['remat_policy']}, {s['dtype']}, scan_layers "
    f"{s['scan_layers']}; attention {', '.join(s['attention']) or '-'}",
    f"  {'crashed' if 'crash' in p else 'compiled'} in {p['compile_seconds']:.1f} s (traced and "
    f"lowered in {p['lower_seconds']:.1f} s)",
    "memory per device:",
    f"  parameters {_bytes(m['params'])}, optimizer state {_bytes(m['optimizer'])}, batch {_bytes(m['batch'])}",
  ]
  if "crash" in p:
    lines += [
      f"  NO PLAN: the {p['target'].split(':')[0].upper()} {p['crash']} (its child process; no memory"
      " figures from the compiler)",
      f"  (HBM per device {_bytes(m['hbm'])})",
    ]
    return "\n".join(lines)
  if not p["fits"] and "peak" not in m:
    lines += [
      f"  DOES NOT FIT: the compiler refused the program: {p['refusal']}",
      f"  (HBM per device {_bytes(m['hbm'])})",
    ]
    return "\n".join(lines)
  headroom = m["limit"] - m["peak"]
  lines += [
    f"  activations and temporaries {_bytes(m['temporary'])}, code {_bytes(m['code'])}",
    f"  peak {_bytes(m['peak'])} of {_bytes(m['limit'])} usable (HBM {_bytes(m['hbm'])}): "
    + (
      f"fits, {_bytes(headroom)} to spare"
      if p["fits"]
      else f"DOES NOT FIT by {_bytes(-headroom)}: {p.get('refusal', '')}"
    ),
    "FLOPs per device per step:",
    f"  model {p['model_flops_per_step'] / p['devices']:.3e}; compiler "
    + (
      f"{p['compiler_flops_per_device']:.3e}"
      if p["compiler_flops_per_device"]
      else "(none: this compiler gives no cost analysis)"
    ),
    "collectives per device per step (bytes sent, ring):",
  ]
  if not p["collectives"]:
    lines.append("  none")
  for kind, c in p["collectives"].items():
    where = f", over {c['max_islands']} slices/hosts" if c.get("max_islands", 1) > 1 else ""
    lines.append(
      f"  {kind:<20} {c['ops']:>4} ops, {c['executions']:>6} runs, result {_bytes(c['bytes'])}, sent "
      f"{_bytes(c['link_bytes'])} link + {_bytes(c['network_bytes'])} network{where}"
    )
  r = p["roofline"]
  sec = r["seconds"]
  lines += [
    "roofline (per device; predicted = the largest bound):",
    f"  compute {_ms(sec['compute'])} ({r['flops_source']} FLOPs), HBM {_ms(sec['hbm'])}"
    f" ({r['hbm_source']}), link {_ms(sec['link'])}, network {_ms(sec['network'])}",
    f"  predicted step {_ms(r['step_seconds'])} ({r['bound']}-bound; "
    f"{_ms(r['serial_step_seconds'])} with no overlap), {r['tokens_per_sec']:,.0f} tokens/s, "
    f"MFU {r['mfu']:.1%}",
  ]
  return "\n".join(lines)


def format_candidate(p: dict) -> str:
  """One compiled candidate of a search, as it comes."""
  if p["fits"]:
    r = p["roofline"]
    outcome = f"fits, peak {_bytes(p['memory']['peak'])}, step {_ms(r['step_seconds'])}"
  else:
    outcome = f"not fitting: {p.get('crash') or p.get('refusal', '')}"
  return f"  compiled ({p.get('compile_seconds', 0):.0f} s): {overrides(p)}: {outcome}"


def format_search(results: list[dict], limit_note: str) -> str:
  fitting = [r for r in results if r.get("fits")]
  lines = [
    f"search: {len(results)} configurations compiled ({limit_note}), {len(fitting)} fit; fastest first:"
  ]
  for r in fitting:
    ro = r["roofline"]
    lines.append(
      f"  {_ms(ro['step_seconds']):>10}  {ro['tokens_per_sec']:>12,.0f} tok/s  MFU {ro['mfu']:6.1%}  "
      f"peak {_bytes(r['memory']['peak'])}  {overrides(r)}"
    )
  refused = [r for r in results if not r.get("fits")]
  if refused:
    lines.append(f"  not fitting: {len(refused)}")
  for r in refused:
    lines.append(f"    {overrides(r)}: {r.get('crash') or r.get('refusal', '')}")
  return "\n".join(lines)
