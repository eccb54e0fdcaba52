from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "weights" / "fixtures"
REFERENCE = ROOT / "weights" / "reference"

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
