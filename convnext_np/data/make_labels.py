"""Write imagenet-1k.txt, imagenet-12k.txt and imagenet-22k.txt, one class name per line, in logit order.

The names are the WordNet lemmas that timm ships (``timm/data/_info``): the 1000 synsets of
ImageNet-1k in their usual order, the 11821 synsets of timm's ImageNet-12k subset of fall11
(``imagenet12k_synsets.txt``, the order of the ``in12k`` heads), and the 21841 synsets of
ImageNet-22k in fall11 order, the order of the 22k ConvNeXt heads. Run with timm installed: ``python convnext_np/data/make_labels.py``.
"""

from pathlib import Path

import timm.data

INFO = Path(timm.data.__file__).parent / "_info"
HERE = Path(__file__).parent


def main():
    lemma = dict(line.rstrip("\n").split("\t", 1)
                 for line in (INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    for out, synsets in [("imagenet-1k.txt", "imagenet_synsets.txt"),
                         ("imagenet-12k.txt", "imagenet12k_synsets.txt"),
                         ("imagenet-22k.txt", "imagenet22k_synsets.txt")]:
        names = [lemma[s.strip()] for s in (INFO / synsets).read_text().splitlines()]
        (HERE / out).write_text("\n".join(names) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
