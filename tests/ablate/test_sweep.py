"""A sweep config read and checked: variants share the budget, seeds and settings are validated, and the
shipped sweeps change only the attention."""

import os
import sys

import pytest

from pretrain import ablate
from pretrain.ablate import sweep as sweep_lib
from pretrain.errors import PretrainError
from pretrain.families.bert import model as bert
from pretrain.families.gpt2 import model as gpt2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_sweep import tiny_sweep  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_variants_share_the_budget_and_unknown_keys_are_refused(text_corpus):
  configs = ablate.variant_configs(
    tiny_sweep(text_corpus, {"base": {}, "wide": {"model": {"intermediate_size": 128}}})
  )
  assert (
    configs["wide"].model.intermediate_size == 128 and configs["base"].model.intermediate_size == 64
  )
  assert configs["wide"].train.steps == configs["base"].train.steps == 4
  with pytest.raises(PretrainError, match="changes train.steps"):
    ablate.variant_configs(tiny_sweep(text_corpus, {"longer": {"train": {"steps": 8}}}))
  with pytest.raises(PretrainError, match="changes train.seed"):
    ablate.variant_configs(tiny_sweep(text_corpus, {"lucky": {"train": {"seed": 7}}}))
  with pytest.raises(PretrainError, match="num_headz"):
    ablate.variant_configs(tiny_sweep(text_corpus, {"typo": {"model": {"num_headz": 4}}}))
  sweep = tiny_sweep(text_corpus, {"a": {}})
  sweep.base = "configs/absent.py"
  with pytest.raises(PretrainError, match="absent.py"):
    ablate.variant_configs(sweep)


def test_settings_defaults_and_seeded_configs(text_corpus):
  sweep = tiny_sweep(text_corpus, {"a": {}, "b": {"model": {"num_heads": 4}}})
  del sweep["seeds"]
  configs = ablate.variant_configs(sweep)
  s = sweep_lib.settings(sweep, configs)
  assert (s.seeds, s.seed_keys, s.baseline, s.alpha, s.test, s.correction) == (
    3,
    ("train.seed", "data.seed"),
    "a",
    0.05,
    "t",
    "none",
  )
  # Seed index k moves every seed key by k, the same in every variant; index 0 is the config itself.
  for name in configs:
    two = sweep_lib.seeded(configs[name], s.seed_keys, 2)
    assert (two.train.seed, two.data.seed) == (
      configs[name].train.seed + 2,
      configs[name].data.seed + 2,
    )
    assert sweep_lib.seeded(configs[name], s.seed_keys, 0).to_dict() == configs[name].to_dict()
  init_only = sweep_lib.seeded(configs["a"], ("train.seed",), 1)  # One data order for all seeds.
  assert init_only.data.seed == configs["a"].data.seed and init_only.train.seed == 1


@pytest.mark.parametrize(
  "settings,match",
  [
    (dict(baseline="c"), "baseline 'c' is not a variant; the sweep has a, b"),
    (dict(seeds=0), "seeds=0 must be an integer >= 1"),
    (dict(seeds=2.5), "seeds=2.5"),
    (dict(alpha=1.5), "alpha=1.5"),
    (dict(test="sign"), "test='sign'"),
    (dict(correction="bonferroni"), "correction='bonferroni'"),
    (dict(seed_keys=["train.sead"]), "seed_keys: 'train.sead'"),
    (dict(seedz=3), "unknown sweep key"),
  ],
)
def test_bad_settings_are_refused(text_corpus, settings, match):
  sweep = tiny_sweep(text_corpus, {"a": {}, "b": {}}, **settings)
  with pytest.raises(PretrainError, match=match.replace("(", r"\(").replace(")", r"\)")):
    sweep_lib.settings(sweep, ablate.variant_configs(sweep))


@pytest.mark.parametrize(
  "path,family",
  [("configs/ablations/attention.py", "bert"), ("configs/ablations/gpt2_window.py", "gpt2")],
)
def test_shipped_sweeps_change_only_attention(path, family):
  """Each shipped variant is valid, shares the budget, and differs from the first only in model.attention."""
  sweep = ablate.load_config_file(path)
  configs = ablate.variant_configs(sweep)
  settings = sweep_lib.settings(sweep, configs)
  assert settings.seeds >= 3 and settings.baseline in configs
  assert len(configs) >= 4
  first = next(iter(configs.values()))
  model_cls = {"bert": bert.BertConfig, "gpt2": gpt2.Gpt2Config}[family]
  built = set()
  for c in configs.values():
    assert c.task.name == family
    for section in ("data", "train", "optimizer", "task"):
      assert c[section].to_dict() == first[section].to_dict()
    model = c.model.to_dict()
    assert {k: v for k, v in model.items() if k != "attention"} == {
      k: v for k, v in first.model.to_dict().items() if k != "attention"
    }
    built.add(model_cls.from_dict(dict(model, vocab_size=512)).attention)
  assert len(built) == len(configs)  # Every variant is a different attention.


def test_unknown_variant_or_seed_index_is_refused_before_anything_is_written(text_corpus, tmp_path):
  sweep = tiny_sweep(text_corpus, {"a": {}, "b": {}}, seeds=2)
  with pytest.raises(PretrainError, match="unknown variant.s. c; the sweep has a, b"):
    ablate.run_sweep(sweep, str(tmp_path / "s"), only=["c"])
  with pytest.raises(PretrainError, match="seed index 2 is outside the sweep's seeds 0..1"):
    ablate.run_sweep(sweep, str(tmp_path / "s"), only=["a"], seeds=[2])
  assert not (tmp_path / "s").exists()
