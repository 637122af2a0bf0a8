"""Small GLUE task folders in the distribution's layouts (pretrain/finetune/tasks/glue.py), for the tests."""

import os

from pretrain.finetune.tasks import glue

# (folder, file -> lines) in the GLUE distribution's layouts.
LAYOUTS = {
  "cola": {
    "train.tsv": [
      "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.",
      "gj04\t0\t*\tThe more.",
    ],
    "dev.tsv": ["cj99\t1\t\tThe book was read."],
  },
  "sst2": {
    "train.tsv": ["sentence\tlabel", "a gorgeous film \t1", "dull and long \t0"],
    "dev.tsv": ["sentence\tlabel", "it 's a charming journey . \t1"],
  },
  "mrpc": {
    "train.tsv": [
      "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
      '1\t702876\t702977\tHe said "yes" today.\tToday he said yes.',
    ],
    "dev.tsv": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tA cat.\tA dog."],
  },
  "stsb": {
    "train.tsv": [
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
      "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
      "An air plane is taking off.\t5.000",
    ],
    "dev.tsv": [
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
      "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hat.\tA man is playing.\t1.200",
    ],
  },
  "qqp": {
    "train.tsv": [
      "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
      "133273\t213221\t213222\tHow is the life?\tHow is life?\t1",
    ],
    "dev.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "1\t2\t3\tWhy?\tHow?\t0"],
  },
  "mnli": {
    "train.tsv": [
      "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
      "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
      "0\t31193\t31193n\tgovernment\t( ( x ) )\t( y )\t(ROOT x)\t(ROOT y)\tPremise one.\t"
      "Hypothesis one.\tneutral\tneutral",
    ],
    "dev_matched.tsv": [
      "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
      "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
      "0\t1\t1e\tfiction\tx\ty\tx\ty\tThe man slept.\tA man rested.\tentailment\tentailment\t"
      "entailment\tneutral\tentailment\tentailment",
    ],
    "dev_mismatched.tsv": [
      "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
      "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
      "0\t1\t1c\tletters\tx\ty\tx\ty\tIt rained.\tIt was dry.\tcontradiction\tcontradiction\t"
      "contradiction\tcontradiction\tcontradiction\tcontradiction",
    ],
  },
  "qnli": {
    "train.tsv": ["index\tquestion\tsentence\tlabel", "0\tWhen?\tAt noon.\tentailment"],
    "dev.tsv": ["index\tquestion\tsentence\tlabel", "0\tWho?\tIt rained.\tnot_entailment"],
  },
  "rte": {
    "train.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA b.\tC d.\tnot_entailment"],
    "dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA b.\tA.\tentailment"],
  },
  "wnli": {
    "train.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin.\tThe pin stuck.\t1"],
    "dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t0"],
  },
}


def write_glue(root, tasks=LAYOUTS, edit=None):
  """GLUE folders under `root` with the LAYOUTS files; edit(task, file, lines) may change them."""
  for name, files in tasks.items():
    folder = os.path.join(root, glue.TASKS[name].folder)
    os.makedirs(folder, exist_ok=True)
    for file, lines in files.items():
      lines = edit(name, file, list(lines)) if edit else lines
      with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
  return str(root)
