"""The README opens with the two set-up commands, and CI runs exactly the second one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_code_block():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_main_job_and_the_tests():
    main_job, tests = first_code_block()
    assert "convnext-np classify" in main_job
    image = main_job.split("convnext-np classify", 1)[1].split()[0]
    assert (ROOT / image).is_file()
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = first_code_block()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
