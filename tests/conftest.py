import os
import random
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "weights" / "fixtures"
REFERENCE = ROOT / "weights" / "reference"
# The test photos; a test that needs a particular one names it (IMAGE_DIR / "chelsea.png").
IMAGE_DIR = ROOT / "tests" / "data" / "images"
ALL_IMAGES = sorted(IMAGE_DIR.iterdir())

# layout -> what from_pretrained is given (a directory, or a bare file inside it)
LAYOUT_SOURCES = {
    "hf-safetensors": "hf-safetensors",
    "hf-bin": "hf-bin",
    "hf-sharded": "hf-sharded",
    "hf-f16": "hf-f16",
    "hf-bf16": "hf-bf16",
    "timm": "timm",
    "timm-conv-mlp": "timm-conv-mlp",
    "fb-pth": "fb-pth/checkpoint.pth",
    "fb-safetensors": "fb-safetensors/checkpoint.safetensors",
}
# ConvNeXt V2 (GRN blocks): layout -> source, and whether the model has a classification head
V2_LAYOUT_SOURCES = {
    "v2-hf-safetensors": ("v2-hf-safetensors", True),
    "v2-hf-headless": ("v2-hf-headless", False),
    "v2-timm": ("v2-timm", True),
    "v2-timm-conv-mlp": ("v2-timm-conv-mlp", True),
    "v2-timm-fcmae": ("v2-timm-fcmae", False),
    "v2-fb-pt": ("v2-fb-pt/checkpoint.pt", True),
}


# Test tiers by module (markers declared in pyproject.toml); single slow tests carry
# @pytest.mark.slow themselves. `pytest -m "not slow"` is the quick loop; CI runs everything.
MODULE_MARKS = {
    "test_spark": ("spark", "slow"),
    "test_parity_live": ("reference", "slow"),
    "test_family_live": ("reference", "slow"),
    "test_timm_tags_live": ("reference", "slow"),
    "test_fuzz": ("slow",),
    "test_examples": ("slow",),  # runs each example script in a fresh interpreter
}


def pytest_collection_modifyitems(items):
    for item in items:
        for name in MODULE_MARKS.get(item.module.__name__.rpartition(".")[2], ()):
            item.add_marker(name)


# Hypothesis (test_fuzz, the property tests): with CI set, every run draws the same examples
# (derandomize: a seed made from each test's own code), so CI cannot pass on one run and fail on
# the next. Elsewhere each run draws new examples from one seed, shown in the report header, and
# `pytest --hypothesis-seed=N` replays a run exactly; a seed given that way is used in CI too.
settings.register_profile("ci", derandomize=True, database=None)


@pytest.hookimpl(tryfirst=True)  # before Hypothesis' plugin reads --hypothesis-seed
def pytest_configure(config):
    if config.getoption("hypothesis_seed") is not None:
        return
    if os.environ.get("CI"):
        settings.load_profile("ci")
    else:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed")
    if seed is None:
        return "hypothesis: derandomized (CI is set): the same examples every run"
    return f"hypothesis: seed {seed}; replay this run with --hypothesis-seed={seed}"


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=40,
                     help="hypothesis examples per fuzz test (default 40, bounded for CI)")


@pytest.fixture
def fuzz_examples(request):
    return request.config.getoption("--fuzz-examples")


# case -> max |logits - reference| that the parity tests measured; printed after the run.
MAX_DIFFS = {}


def pytest_terminal_summary(terminalreporter):
    if MAX_DIFFS:
        terminalreporter.section("parity: max |logits - reference| per case")
        for label, diff in sorted(MAX_DIFFS.items()):
            terminalreporter.write_line(f"{label:44s} {diff:.2e}")
