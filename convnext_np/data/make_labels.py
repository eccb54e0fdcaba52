"""Write the ImageNet class lists, one class a line, in logit order.

``imagenet-1k.txt``, ``imagenet-12k.txt`` and ``imagenet-22k.txt`` hold the WordNet lemmas (the
class names); ``imagenet-*-synsets.txt`` the WordNet ids (``n01440764``), the names of
ImageNet-val's class folders. All come from the lists that timm ships (``timm/data/_info``): the
1000 synsets of ImageNet-1k in their usual order, the 11821 synsets of timm's ImageNet-12k subset
of fall11 (``imagenet12k_synsets.txt``, the order of the ``in12k`` heads), and the 21841 synsets
of ImageNet-22k in fall11 order, the order of the 22k ConvNeXt heads.
Run with timm installed (it is not imported, so its torch dependency need not be):
``python convnext_np/data/make_labels.py``.
"""

from importlib.util import find_spec
from pathlib import Path

INFO = Path(find_spec("timm").submodule_search_locations[0]) / "data" / "_info"
HERE = Path(__file__).parent


def main():
    lemma = dict(line.rstrip("\n").split("\t", 1)
                 for line in (INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    for out, synsets in [("imagenet-1k", "imagenet_synsets.txt"),
                         ("imagenet-12k", "imagenet12k_synsets.txt"),
                         ("imagenet-22k", "imagenet22k_synsets.txt")]:
        ids = [s.strip() for s in (INFO / synsets).read_text().splitlines()]
        (HERE / f"{out}.txt").write_text("\n".join(lemma[s] for s in ids) + "\n", encoding="utf-8")
        (HERE / f"{out}-synsets.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
