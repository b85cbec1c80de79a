"""The README's marked console examples are today's output: a changed message, column or figure fails here
until ``python scripts/readme_examples.py --update`` rewrites the README (and the diff is reviewed)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "readme_examples.py"


def load_script():
    spec = importlib.util.spec_from_file_location("readme_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_readme_console_examples_are_todays_output(capsys):
    examples = load_script()
    readme = (SCRIPT.parents[1] / "README.md").read_text().split("\n")
    assert len(examples.parse(readme)) >= 20  # the quick start through gc, methods and plugins
    code = examples.main([])
    printed = capsys.readouterr().out
    assert code == 0, printed


def test_a_changed_output_is_a_difference():
    """The check compares for real: a README line that is not today's output differs, a time does not."""
    examples = load_script()
    lines = [
        "<!-- example -->",
        "```console",
        "$ adapterhub alias history acme/chat production",
        "2026-11-24T07:30:19+00:00  alice  -  1  first release",
        "```",
    ]
    [example] = examples.parse(lines)
    same = [
        [("adapterhub alias history acme/chat production", ["2026-12-07T10:00:00+00:00  alice  -  1  first release"])]
    ]
    other = [
        [("adapterhub alias history acme/chat production", ["2026-12-07T10:00:00+00:00  mallory  -  1  first release"])]
    ]
    assert examples.differences([example], same, lines) == []
    [diff] = examples.differences([example], other, lines)
    assert "-<time>  alice" in diff and "+<time>  mallory" in diff
